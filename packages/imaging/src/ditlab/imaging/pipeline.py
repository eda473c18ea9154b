"""Upscale and restore real images: files or arrays in, `io.Image` out, on the shipped networks.

    from ditlab.imaging import upscale, restore, read_image, write_image
    out = upscale(read_image("photo.jpg"), scale=4)           # real-world degradations (default) or "bicubic"
    write_image("photo_x4.png", out)                          # 16-bit in -> 16-bit out, alpha kept
    clean = restore(read_image("scan.png"), task="denoise")   # | "deblur" | "jpeg"

What happens to an image: grey is run as RGB and turned back to grey; the alpha channel is resized on its own
(bicubic) and kept; the colour pixels go through the tiled residual-shift sampler (`superres.sample`); x2 is the
x4 network's result downscaled by 2 (antialiased bicubic); a colour fix (default "wavelet") brings the low
frequencies back to the input's, so no colour shift creeps in. The network computes in `precision` ("auto":
the mode calibrated fastest on this machine within `MIN_SNR_DB` of fp32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ditlab.core.errors import InputError
from ditlab.imaging.degrade import TASKS
from ditlab.imaging.io import Image, check_output_size, from_array, read_image, resize_alpha
from ditlab.imaging.models import SRDiT, load_model, upsample
from ditlab.imaging.superres import check_colour, colour_fix, sample

SCALES = (2, 4)
"""Upscaling factors offered (x2 runs the x4 network, then halves its result)."""
DEGRADATIONS = {"real": 1, "bicubic": 0}
"""What the input went through -> the x4 network's task index: "real" (unknown, camera-like: blur, noise, JPEG;
the default) or "bicubic" (a clean downscale)."""
WEIGHTS = {"sr": "sr-x4", "restore": "restore-x1"}
MIN_SNR_DB = 40.0
"""The error bound of precision "auto" for these networks: output SNR against fp32 (moves Y-PSNR by < 0.01 dB)."""


@dataclass
class Enhancer:
    """A loaded network (packaged `sr-x4` / `restore-x1`, or a weights folder) with its sampling settings;
    reuse one for many images. `steps` None: the network's own (`sample_steps` of its config, chosen on validation
    images); `tile` / `overlap` in input pixels."""

    kind: str = "sr"  # "sr" | "restore"
    weights: str | Path | None = None
    steps: int | None = None
    tile: int | None = None
    overlap: int | None = None
    batch: int = 16
    precision: str | None = None
    device: str | torch.device = "cpu"
    seed: int = 0
    _model: SRDiT | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from ditlab.core.accel.auto import check_precision, default_precision

        if self.kind not in WEIGHTS:
            raise InputError(f"kind must be one of {sorted(WEIGHTS)}, got {self.kind!r}")
        self.precision = check_precision(self.precision or default_precision())
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")
        if self.batch < 1:
            raise InputError(f"batch must be >= 1, got {self.batch}")

    @property
    def model(self) -> SRDiT:
        if self._model is None:
            model = load_model(self.weights or WEIGHTS[self.kind], device=self.device)
            if not isinstance(model, SRDiT):
                raise InputError(f"{self.weights}: expected SRDiT weights, got {type(model).__name__}")
            want = 4 if self.kind == "sr" else 1
            if model.scale != want:
                raise InputError(f"{self.weights}: a x{model.scale} network; {self.kind} needs a x{want} network")
            self._model = model
        return self._model

    def steps_for(self, task: int) -> int:
        """The number of steps a run of `task` takes."""
        return int(self.steps or self.model.default_steps(task if self.model.task_embedder is not None else None))

    @property
    def tile_size(self) -> int:
        return int(self.tile or self.model.config.tile)

    def prepared(self):
        """The network to call and its context (`ditlab.core.accel.auto.Prepared`), calibrated on first use."""
        from ditlab.core.accel.auto import Probe, prepare

        m, t = self.model, self.tile_size
        s, n = m.scale, min(self.batch, 16)

        def probe() -> Probe:
            g = torch.Generator().manual_seed(0)
            lr = torch.rand((n, 3, t, t), generator=g) * 2 - 1
            x = upsample(lr, s) + torch.randn((n, 3, t * s, t * s), generator=g)
            task = torch.zeros(n, dtype=torch.long) if m.task_embedder is not None else None
            return Probe(x.to(self.device), {"lr": lr.to(self.device), "task": task}, time_scale=1000.0)

        return prepare(m, self.precision, probe, min_snr_db=MIN_SNR_DB)

    def run(self, rgb: np.ndarray, task: int, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(H, W, 3) in [0, 1] -> (s*H, s*W, 3) in [0, 1], the network's scale."""
        run = self.prepared()
        lr = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)
        out = sample(self.model, lr, steps=self.steps, generator=torch.Generator().manual_seed(self.seed),
                     tile=self.tile, overlap=self.overlap, batch=self.batch,
                     task=task if self.model.task_embedder is not None else None, net=run.net, context=run.context,
                     progress=progress)
        return out[0].permute(1, 2, 0).cpu().numpy()


def as_image(image: Image | np.ndarray | str | Path) -> Image:
    """An `Image` from an Image, an array ((H, W), (H, W, 1|3|4); uint8, uint16 or float in [0, 1]) or a path."""
    if isinstance(image, Image):
        return image
    if isinstance(image, str | Path):
        return read_image(image)
    if isinstance(image, np.ndarray):
        return from_array(image)
    raise InputError(f"expected an image (ditlab.imaging.Image, a numpy array or a file path), got "
                     f"{type(image).__name__}")


def _resize(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    return x[0].permute(1, 2, 0).numpy()


def _finish(img: Image, rgb: np.ndarray, ref: np.ndarray, colour: str, note: str) -> Image:
    """Colour fix against `ref`, back to grey if the input was, alpha resized: the output Image."""
    out = colour_fix(torch.from_numpy(rgb).permute(2, 0, 1)[None], torch.from_numpy(ref).permute(2, 0, 1)[None],
                     colour)[0].permute(1, 2, 0).numpy()
    h, w = out.shape[:2]
    if img.channels == 1:
        out = out.mean(axis=2, keepdims=True)
    alpha = None if img.alpha is None else resize_alpha(img.alpha, h, w)
    return replace(img, pixels=np.ascontiguousarray(out, dtype=np.float32), alpha=alpha,
                   notes=[*img.notes, note])


def upscale(image: Image | np.ndarray | str | Path, scale: int = 4, degradation: str = "real", *,
            colour: str = "wavelet", enhancer: Enhancer | None = None,
            progress: Callable[[int, int], None] | None = None, **settings) -> Image:
    """Super-resolve an image x2 or x4. `degradation`: "real" (unknown real-world; default) or "bicubic";
    `settings` are `Enhancer` fields (weights, steps, tile, overlap, batch, precision, device, seed) when no
    `enhancer` is given."""
    if scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES}, got {scale!r}")
    if degradation not in DEGRADATIONS:
        raise InputError(f"degradation must be one of {sorted(DEGRADATIONS)}, got {degradation!r}")
    check_colour(colour)
    img = as_image(image)
    check_output_size(img.height * scale, img.width * scale)
    enh = enhancer or Enhancer("sr", **settings)
    rgb = _rgb(img)
    out = enh.run(rgb, DEGRADATIONS[degradation], progress)
    if scale == 2:
        out = _resize(out, 2 * img.height, 2 * img.width)
    ref = upsample(torch.from_numpy(rgb).permute(2, 0, 1)[None], scale).clamp_(0, 1)[0].permute(1, 2, 0).numpy()
    return _finish(img, out, ref, colour, f"x{scale} ({degradation}), {enh.prepared().mode}")


def restore(image: Image | np.ndarray | str | Path, task: str = "denoise", *, colour: str = "none",
            enhancer: Enhancer | None = None, progress: Callable[[int, int], None] | None = None,
            **settings) -> Image:
    """Restore an image at its own size: `task` "denoise" | "deblur" | "jpeg"."""
    if task not in TASKS:
        raise InputError(f"task must be one of {TASKS}, got {task!r}")
    check_colour(colour)
    img = as_image(image)
    enh = enhancer or Enhancer("restore", **settings)
    rgb = _rgb(img)
    out = enh.run(rgb, TASKS.index(task), progress)
    return _finish(img, out, rgb, colour, f"{task}, {enh.prepared().mode}")


def _rgb(img: Image) -> np.ndarray:
    px = img.pixels
    return np.ascontiguousarray(np.repeat(px, 3, axis=2) if px.shape[2] == 1 else px, dtype=np.float32)
