"""Regenerate every picture in the documentation: run each tutorial, which writes its figures, then
the figures of the family guides that need a full preset run.

    python docs/make_figures.py            # into docs/images/tutorials/ (run directories under runs/tutorials/)
    python docs/make_figures.py OUT_DIR    # tutorials' pictures into OUT_DIR, the guides' into OUT_DIR too
    python docs/make_figures.py --only hierarchical_vae.py hierarchical-vae   # some sections only

The tutorials train on the built-in data only (digits, procedural shapes), so this needs no
download; they take a few minutes on a laptop CPU. The hierarchical-VAE guide's figures
(docs/images/hierarchical-*.png) train the `digits-hvae` preset in full twice, with and without KL
balancing: about 5 minutes each on 2 cores (run directories under runs/figures/).
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUTORIALS = ("vae.py", "wae.py", "point_clouds.py", "hierarchical_vae.py", "vq_vae.py", "bits_back.py")


def hierarchical_vae_figures(out: Path) -> None:
    """docs/images/hierarchical-*.png: the `digits-hvae` preset as it ships (3000 steps), trained with
    KL balancing during warm-up (its default) and without; samples of the first at three
    temperatures from the same noise, and the test KL per latent group of both (all 360 test digits)."""
    import torch

    import vaekit
    from vaekit.data import load_data
    from vaekit.viz import save_image_grid, save_kl_per_group_plot

    runs = Path("runs") / "figures"
    kl_per_group, model = {}, None
    for label, balancing in (("KL balancing during warm-up (preset)", True), ("no KL balancing", False)):
        flag = str(balancing).lower()
        run_dir = vaekit.train("digits-hvae", overrides=[
            f"out_dir={runs}", f"name=hvae-balancing-{flag}", f"model.kl_balancing={flag}", "train.eval_every=3000",
            "eval.num_importance_samples=100"], force=True, quiet=True)
        model = vaekit.load(run_dir)
        test = load_data(model.run_config.data).test.to(model.device)
        with torch.no_grad():
            kl_per_group[label] = model.extra_scores(test)["kl_per_group"]
            if balancing:
                for temperature in (0.4, 0.7, 1.0):  # the same noise, scaled: N(mu_p, (t sigma_p)^2) per group
                    samples = model.sample(32, generator=torch.Generator().manual_seed(0), temperature=temperature)
                    save_image_grid(samples, out / f"hierarchical-samples-t{temperature:g}.png")
        print(f"{label}: KL per group {[round(v, 2) for v in kl_per_group[label]]} nats", flush=True)
    labels = [f"$z_{{{index + 1}}}$ ({'x'.join(map(str, shape))})" for index, shape in enumerate(model.latent_shapes())]
    save_kl_per_group_plot(kl_per_group, out / "hierarchical-kl-per-group.png", group_labels=labels,
                      title="digits-hvae, 3000 steps: test KL per latent group")


GUIDE_FIGURES = {"hierarchical-vae": hierarchical_vae_figures}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Regenerate the pictures of the documentation.")
    parser.add_argument("out", nargs="?", type=Path, help="folder for the pictures (default: docs/images/tutorials "
                        "for the tutorials', docs/images for the guides')")
    parser.add_argument("--only", nargs="+", choices=[*TUTORIALS, *GUIDE_FIGURES], help="these sections only")
    args = parser.parse_args()
    sections = args.only or [*TUTORIALS, *GUIDE_FIGURES]
    for tutorial in (t for t in TUTORIALS if t in sections):
        print(f"== {tutorial}", flush=True)
        out = args.out or HERE / "images" / "tutorials"
        subprocess.run([sys.executable, str(HERE / "tutorials" / tutorial), str(out)], check=True)
    for name, make in GUIDE_FIGURES.items():
        if name in sections:
            print(f"== {name} figures", flush=True)
            (args.out or HERE / "images").mkdir(parents=True, exist_ok=True)
            make(args.out or HERE / "images")
