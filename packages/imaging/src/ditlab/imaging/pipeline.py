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
from ditlab.imaging.superres import RowStream, check_colour, colour_fix, sample, upsample_rows

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

    def run(self, rgb: np.ndarray, task: int, progress: Callable[[int, int], None] | None = None,
            sink: Callable[[int, torch.Tensor], None] | None = None) -> np.ndarray | None:
        """(H, W, 3) in [0, 1] -> (s*H, s*W, 3) in [0, 1], the network's scale; with `sink`, the rows go to
        `sink(row, rows)` ((1, 3, n, s*W) tensors, top to bottom) as they are finished and None is returned."""
        run = self.prepared()
        lr = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)
        out = sample(self.model, lr, steps=self.steps, generator=torch.Generator().manual_seed(self.seed),
                     tile=self.tile, overlap=self.overlap, batch=self.batch,
                     task=task if self.model.task_embedder is not None else None, net=run.net, context=run.context,
                     progress=progress, sink=sink)
        return None if out is None else out[0].permute(1, 2, 0).cpu().numpy()


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


BLUR_HALO = 24
"""Rows of context the wavelet colour fix needs (3 sigma of its Gaussian, sigma 8)."""
HALVE_HALO = 8
"""Rows of context the antialiased bicubic halving needs (its support is 4 rows each side)."""


def _output(img: Image, rgb: np.ndarray, size: tuple[int, int], scale: int, colour: str,
            halve: bool) -> tuple[np.ndarray, Callable[[int, torch.Tensor], None], Callable[[], None]]:
    """The output array (h, w, channels of `img`) and the sink that fills it from the network's finished rows:
    [halved (x2)], colour-fixed against the input upsampled by `scale` ("wavelet" row by row; "adain" once all rows
    are in, by `finish()`), back to grey when the input was."""
    h, w = size
    arr = np.empty((h, w, img.channels), np.float32)
    lr = torch.from_numpy(rgb).permute(2, 0, 1)[None]

    def ref_rows(r0: int, r1: int) -> torch.Tensor:
        return upsample_rows(lr, scale, r0, r1).clamp(0, 1)

    def write(r0: int, rows: torch.Tensor) -> None:
        x = rows[0].permute(1, 2, 0).numpy()
        arr[r0:r0 + x.shape[0]] = x.mean(axis=2, keepdims=True) if img.channels == 1 else x

    sink = write
    if colour == "wavelet":
        sink = RowStream(lambda x, r0: colour_fix(x, ref_rows(r0, r0 + x.shape[2]), "wavelet"), h, sink,
                         halo=BLUR_HALO)
    if halve:
        def half(x: torch.Tensor, r0: int) -> torch.Tensor:
            return F.interpolate(x, size=(x.shape[2] // 2, x.shape[3] // 2), mode="bicubic", antialias=True,
                                 align_corners=False).clamp_(0, 1)

        sink = RowStream(half, 2 * h, sink, halo=HALVE_HALO, down=2)

    def finish() -> None:
        if colour == "adain":
            _adain_in_place(arr, ref_rows, img.channels)

    return arr, sink, finish


def _adain_in_place(arr: np.ndarray, ref_rows: Callable[[int, int], torch.Tensor], channels: int,
                    chunk: int = 256) -> None:
    """AdaIN colour fix of the finished output: per-channel mean and std matched to the reference's."""
    def stats(get) -> tuple[np.ndarray, np.ndarray]:
        s1 = s2 = 0.0
        for r in range(0, arr.shape[0], chunk):
            x = get(r, min(arr.shape[0], r + chunk)).astype(np.float64)
            s1, s2 = s1 + x.sum((0, 1)), s2 + (x * x).sum((0, 1))
        n = arr.shape[0] * arr.shape[1]
        mean = s1 / n
        return mean, np.sqrt(np.maximum(s2 / n - mean**2, 0) * n / max(n - 1, 1))

    def ref(r0: int, r1: int) -> np.ndarray:
        x = ref_rows(r0, r1)[0].permute(1, 2, 0).numpy()
        return x.mean(axis=2, keepdims=True) if channels == 1 else x

    mo, so = stats(lambda a, b: arr[a:b])
    mr, sr = stats(ref)
    gain, shift = (sr / np.maximum(so, 1e-6)).astype(np.float32), mr.astype(np.float32)
    for r in range(0, arr.shape[0], chunk):
        x = arr[r:r + chunk]
        np.clip((x - mo.astype(np.float32)) * gain + shift, 0, 1, out=x)


def _finish(img: Image, arr: np.ndarray, note: str) -> Image:
    """The output Image: the filled array, the alpha resized, a note."""
    h, w = arr.shape[:2]
    alpha = None if img.alpha is None else resize_alpha(img.alpha, h, w)
    return replace(img, pixels=arr, alpha=alpha, notes=[*img.notes, note])


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
    arr, sink, finish = _output(img, rgb, (img.height * scale, img.width * scale), scale, colour, scale == 2)
    enh.run(rgb, DEGRADATIONS[degradation], progress, sink=sink)
    finish()
    return _finish(img, arr, f"x{scale} ({degradation}), {enh.prepared().mode}")


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
    arr, sink, finish = _output(img, rgb, (img.height, img.width), 1, colour, False)
    enh.run(rgb, TASKS.index(task), progress, sink=sink)
    finish()
    return _finish(img, arr, f"{task}, {enh.prepared().mode}")


def _rgb(img: Image) -> np.ndarray:
    px = img.pixels
    return np.ascontiguousarray(np.repeat(px, 3, axis=2) if px.shape[2] == 1 else px, dtype=np.float32)
