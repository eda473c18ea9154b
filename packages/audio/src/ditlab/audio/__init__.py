"""ditlab.audio: non-autoregressive DiT text-to-speech and joint audio-video."""

__version__ = "0.1.0"
