"""Compression with vaekit's models: the .vqz container and the VQ-VAE image codec."""
