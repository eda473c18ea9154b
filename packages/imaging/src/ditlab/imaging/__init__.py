"""ditlab.imaging: real-world super-resolution and restoration."""

__version__ = "0.1.0"
