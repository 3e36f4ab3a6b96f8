"""Tutorial: a point-cloud auto-encoder, a latent GMM, and the standard metrics (a few minutes on a CPU).

    python docs/tutorials/point_clouds.py [OUT_DIR]

1. Train the `pointcloud-ae` preset (PointNet encoder, MLP decoder, Chamfer loss) on the built-in
   procedural shapes, made smaller here (512 points, 40 shapes per category) to run in minutes.
2. Fit an l-GMM on its latent codes: a two-stage run that names the AE as its parent.
3. Score the l-GMM's samples against the test shapes: JSD, MMD-CD, COV-CD, 1-NNA-CD, and the exact
   EMD versions through the pruned search; and the linear-SVM test of the AE's codes.
4. Renders: reconstructions, an interpolation between two shapes, and samples.
"""

import shutil
import sys
from pathlib import Path

import torch

import vaekit
from vaekit.data import load_data
from vaekit.evaluation import evaluate, write_point_cloud_renders
from vaekit.metrics.emd_search import emd_set_metrics
from vaekit.metrics.pointclouds import chamfer_set_metrics

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "images" / "tutorials"
runs = Path("runs") / "tutorials"  # run directories, relative to the working directory
out.mkdir(parents=True, exist_ok=True)
small = ["data.num_points=512", "data.shapes_per_category=40"]

ae_dir = vaekit.train("pointcloud-ae", overrides=[f"out_dir={runs}", "name=ae", *small, "train.steps=600",
                                                   "train.eval_every=600", "train.checkpoint_every=600"],
                      force=True, quiet=True)
gmm_dir = vaekit.train("pointcloud-latent-gmm", overrides=[f"out_dir={runs}", "name=gmm", f"parent={ae_dir}",
                                                            "model.num_components=5"], force=True, quiet=True)

ae, gmm = vaekit.load(ae_dir), vaekit.load(gmm_dir)
data = load_data(ae.run_config.data)
scores = evaluate(ae, data, ae.run_config.eval)
print(f"AE test Chamfer {scores['reconstruction_chamfer']:.5f}, linear-SVM accuracy on its codes {scores['svm_accuracy']:.2f}")

with torch.no_grad():
    samples = gmm.sample(len(data.test), generator=torch.Generator().manual_seed(0))
metrics = chamfer_set_metrics(samples, data.test) | emd_set_metrics(samples, data.test)
for name, value in metrics.items():
    print(f"{name:>28}: {value:.4f}" if isinstance(value, float) else f"{name:>28}: {value}")

# The AE draws reconstructions and an interpolation between two codes; the l-GMM draws samples.
pictures = write_point_cloud_renders(ae, data, ae_dir, step=0, config=ae.run_config.eval)
pictures += [p for p in write_point_cloud_renders(gmm, data, gmm_dir, step=0, config=gmm.run_config.eval)
             if p.parent.name == "samples"]
for picture in pictures:
    shutil.copyfile(picture, out / f"pointcloud-{picture.parent.name}.png")
print("pictures in", out)
