"""ditlab.molecules: all-atom latent DiT molecule generation."""

__version__ = "0.1.0"
