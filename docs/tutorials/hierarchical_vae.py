"""Tutorial: a hierarchical VAE (NVAE style) on the embedded 8x8 digits (a few minutes on a CPU).

    python docs/tutorials/hierarchical_vae.py [OUT_DIR]

1. Train the `digits-hvae` preset on half its schedule: three latent groups over two scales (z_1 of
   shape 4 x 2 x 2, then z_2 and z_3 of shape 4 x 4 x 4), a top-down prior p(z_l | z_<l) whose path
   the posterior shares, residual-normal posteriors, KL warm-up over the first 30% of the steps
   with NVAE's KL balancing during it, and updates with a huge gradient norm skipped.
2. How much each group is used: the test KL per group as a bar chart, and the active groups
   (a group whose KL stays near 0 carries no information about x).
3. Bounds on log p(x): the ELBO, and the importance-sampled log p(x) with K=100 and K=1000 draws;
   the gap between the last two shows whether the estimate has converged.
4. Pictures: samples at temperatures 0.7 and 1, test digits above their reconstructions, and the
   hierarchy at work: each row keeps one draw of the coarse group z_1 and draws z_2, z_3 afresh.
Pictures land in OUT_DIR (default: docs/images/tutorials), which is what the docs show.
"""

import json
import shutil
import sys
from pathlib import Path

import torch

import vaekit
from vaekit.data import load_data
from vaekit.evaluation import evaluate, write_image_grids
from vaekit.viz import save_image_grid, save_kl_per_group_plot

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "images" / "tutorials"
runs = Path("runs") / "tutorials"  # run directories, relative to the working directory
out.mkdir(parents=True, exist_ok=True)

# 1. Train: the preset with a shorter schedule (warm-up kept at 30% of it); the run's own evaluation
#    uses few importance samples, step 3 below does the careful one.
run_dir = vaekit.train("digits-hvae", overrides=[f"out_dir={runs}", "name=hvae", "train.steps=1500",
                                                 "model.kl_warmup_steps=450", "train.eval_every=1500",
                                                 "train.checkpoint_every=1500", "eval.num_importance_samples=10"],
                       force=True, quiet=True)
model = vaekit.load(run_dir)
data = load_data(model.run_config.data)
records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
last = [record for record in records if record["split"] == "train"][-1]
print(f"trained {last['step']} steps, {last['skipped_steps']} updates skipped (train.skip_grad_norm)")
print("latent groups (channels, height, width), coarsest first:", model.latent_shapes())

# 2 and 3. One evaluation of the first 100 test digits: the KL per group and the bounds on log p(x).
scores = evaluate(model, data, model.run_config.eval.model_copy(update={
    "num_images": 100, "num_importance_samples": 1000, "extra_importance_samples": (100,)}))
print("KL per group (nats):", [round(v, 2) for v in scores["kl_per_group"]],
      f"- {scores['active_groups']} of {len(scores['kl_per_group'])} groups active")
print(f"ELBO:                         {scores['elbo']:8.3f} nats")
print(f"log p(x), K=100:              {-scores['nll_k100']:8.3f} nats")
print(f"log p(x), K=1000:             {-scores['nll']:8.3f} nats (+- {scores['nll_stderr']:.3f}) "
      f"= {scores['bits_per_dim']:.3f} bits/dim")
labels = [f"$z_{{{index + 1}}}$ ({'x'.join(map(str, shape))})" for index, shape in enumerate(model.latent_shapes())]
save_kl_per_group_plot({"digits-hvae, 1500 steps": scores["kl_per_group"]}, out / "hvae-kl-per-group.png",
                  group_labels=labels)

# 4. Pictures: the run's grids (samples at each of the preset's eval.sample_temperatures, reconstructions) ...
for picture in write_image_grids(model, data, run_dir, step=0, config=model.run_config.eval):
    temperature = picture.stem.removeprefix("step-0")  # "" at temperature 1, "-t0.7" at 0.7
    shutil.copyfile(picture, out / f"hvae-{picture.parent.name}{temperature}.png")

# ... and the hierarchy: 6 rows share their draw of z_1 (the coarsest group); z_2 and z_3 are drawn from
# the prior p(z_l | z_<l) given it, through the same top-down pass that sampling and training use.
rows, columns = 6, 8
generator = torch.Generator().manual_seed(0)
coarse = torch.randn(rows, *model.latent_shapes()[0], generator=generator).repeat_interleave(columns, 0)


def shared_coarse_group(index, prior, posterior):
    """z_l for the top-down pass: z_1 fixed per row, every later group a fresh draw of its prior."""
    return coarse if index == 0 else prior.rsample(torch.randn(prior.mean.shape, generator=generator))


with torch.no_grad():
    likelihood, _ = model.top_down(rows * columns, shared_coarse_group)
save_image_grid(model.likelihood.mean_image(likelihood), out / "hvae-shared-coarse-group.png", nrow=columns)
print("pictures in", out)
