"""Tutorial: a VAE on the embedded 8x8 digits, from training to honest evaluation (about a minute on a CPU).

    python docs/tutorials/vae.py [OUT_DIR]

1. Train the `digits-vae` preset: Gaussian encoder q(z|x) with `mean` and `log_var`, Bernoulli
   likelihood on dynamically binarised pixels, ELBO.
2. Compare the ELBO with the IWAE bound for K = 1, 10, 100 and the importance-sampled log p(x).
3. Look inside the encoder: KL per latent dimension, active units, and the distribution of `mean`
   and `log_var` per dimension (the same picture as `vaekit eval --plots`).
4. Samples, reconstructions and a slerp interpolation as PNG grids.
5. A rate-distortion curve: beta-VAEs for five values of beta, test KL (rate) against the
   reconstruction term (distortion); beta < 1 buys reconstructions with rate, beta > 1 the reverse.
Pictures land in OUT_DIR (default: docs/images/tutorials), which is what the docs show.
"""

import shutil
import sys
from pathlib import Path

import torch

import vaekit
from vaekit.data import load_data
from vaekit.evaluation import evaluate, write_image_grids, write_posterior_plot
from vaekit.objectives import iwae_bound
from vaekit.viz import save_rate_distortion_plot

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "images" / "tutorials"
runs = Path("runs") / "tutorials"  # run directories, relative to the working directory
out.mkdir(parents=True, exist_ok=True)

# 1. Train: a preset plus key=value overrides, exactly as on the command line.
run_dir = vaekit.train("digits-vae", overrides=[f"out_dir={runs}", "name=vae"], force=True, quiet=True)
model = vaekit.load(run_dir)
data = load_data(model.run_config.data)
x = data.test[:200]

# 2. Bounds on log p(x): log_weights(x, K) returns log p(x, z_k) - log q(z_k | x) for K draws, (K, B).
torch.manual_seed(0)
with torch.no_grad():
    for k in (1, 10, 100):
        bound = iwae_bound(model.log_weights(x, num_samples=k)).mean().item()
        print(f"IWAE bound, K={k:>3}: {bound:8.3f} nats (K=1 is the ELBO)")
scores = evaluate(model, data, model.run_config.eval.model_copy(update={"num_images": 200,
                                                                        "num_importance_samples": 1000}))
print(f"importance-sampled log p(x), K=1000: {-scores['nll']:8.3f} nats = {scores['bits_per_dim']:.3f} bits/dim")

# 3. The encoder's outputs: which latent dimensions carry information?
print("KL per dimension:", [round(v, 2) for v in scores["kl_per_dim"]])
print(f"active units: {scores['active_units']} of {scores['latent_dim']}")
write_posterior_plot(model, data, model.run_config.eval, out / "vae-posterior.png")

# 4. Pictures: samples, reconstructions, traversals and interpolations.
for picture in write_image_grids(model, data, run_dir, step=0, config=model.run_config.eval):
    shutil.copyfile(picture, out / f"vae-{picture.parent.name}.png")

# 5. Rate and distortion: the two terms of the negative ELBO, traded by beta (Alemi et al. 2018).
betas, rates, distortions = (0.25, 0.5, 1.0, 2.0, 4.0), [], []
for beta in betas:
    beta_run = vaekit.train("digits-vae", overrides=[f"out_dir={runs}", f"name=beta-{beta}", f"model.beta={beta}",
                                                     "train.steps=1500", "train.eval_every=1500",
                                                     "train.checkpoint_every=1500"], force=True, quiet=True)
    beta_model = vaekit.load(beta_run)
    beta_scores = evaluate(beta_model, data, beta_model.run_config.eval.model_copy(update={"num_importance_samples": 10}))
    rates.append(beta_scores["kl"])
    distortions.append(beta_scores["reconstruction_nll"])
    print(f"beta {beta}: rate {rates[-1]:.2f} nats, distortion {distortions[-1]:.2f} nats")
save_rate_distortion_plot(rates, distortions, [f"beta={b}" for b in betas], out / "vae-rate-distortion.png")
print("pictures in", out)
