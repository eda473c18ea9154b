"""ditlab.vision3d: point-cloud shape and LiDAR scene generation."""

__version__ = "0.1.0"
