"""Evaluation metrics: image likelihoods and reconstructions, latent-space diagnostics."""
