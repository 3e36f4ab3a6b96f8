"""Model families; importing this package registers them all."""

from vaekit.models import (  # noqa: F401  (registers the families)
    code_prior,
    hierarchical,
    latent_gan,
    latent_gmm,
    pointcloud,
    vae,
    vqvae,
    wae,
)
from vaekit.models.base import GenerativeModel, Losses
from vaekit.models.registry import build_model, model_names, register_model

__all__ = ["GenerativeModel", "Losses", "build_model", "model_names", "register_model"]
