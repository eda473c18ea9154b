"""ditlab.medical: 3D CT and MRI reconstruction with a DiT prior."""

__version__ = "0.1.0"
