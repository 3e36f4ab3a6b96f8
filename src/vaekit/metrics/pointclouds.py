"""Point-cloud metrics (PointFlow's conventions): reconstruction Chamfer distance; generation metrics to come."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vaekit.divergences import chamfer_distance


@torch.inference_mode()
def chamfer_reconstruction_scores(model: Any, clouds: Tensor, chunk: int) -> dict[str, float]:
    """Mean Chamfer distance (squared, PointFlow's convention) between test clouds and their reconstructions."""
    per_cloud = torch.cat([chamfer_distance(c, model.reconstruct(c), reduction="none") for c in clouds.split(chunk)])
    return {"reconstruction_chamfer": per_cloud.double().mean().item(), "num_clouds": len(clouds)}
