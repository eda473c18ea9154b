"""Image files: read users' PNG, TIFF and JPEG (also BMP, WebP) files, validate them, write results atomically.

A loaded `Image` holds float32 samples in [0, 1], upright (EXIF / TIFF orientation applied), with the alpha
channel apart: the colour goes through the model and the alpha is resized with `resize_alpha`. It remembers
what `write_image` needs to write a result back like its source: the bit depth (8 or 16, exact round trip)
and the ICC profile. Every conversion made on reading (CMYK, palette, orientation ...) is listed in `notes`.

Decoders: Pillow for most files; pypng for 16-bit colour PNG (Pillow cuts those to 8 bits); tifffile for
8/16-bit and float grey / RGB(A) TIFF, Pillow for the other TIFF kinds (palette, CMYK, YCbCr).
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import png
import tifffile

from ditlab.core.errors import FileFormatError, UsageError
from ditlab.core.files import atomic_write, safe_stem, split_suffix

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp")
WRITE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")

MAX_PIXELS = 8192 * 8192
"""Largest input accepted, in pixels (64 megapixels: 768 MiB as float32 RGB). Checked from the file's header,
before any pixel is decoded."""

MAX_OUTPUT_PIXELS = 2**30
"""Largest result written, in pixels (1 gigapixel: 12 GiB as float32 RGB): the largest input (MAX_PIXELS) at x4."""

_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")  # the JPEG plugin also opens MPO (camera JPEG + preview)
_FORMAT_NAMES = "PNG, TIFF, JPEG, BMP or WebP"
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders
_EXIF_ORIENTATION = 0x0112
_TIFF_ORIENTATION = 274
_TIFF_ICC = 34675
_TIFF_DTYPES = ("bool", "uint8", "uint16", "float16", "float32", "float64")  # tifffile decodes; Pillow the rest

# Pillow modes turned into one we take as it is (L, LA, RGB, RGBA, I;16*, I, F), with the note recorded
_PIL_CONVERSIONS = {
    "1": ("L", "bilevel converted to grey"),
    "CMYK": ("RGB", "CMYK converted to RGB"),
    "YCbCr": ("RGB", "YCbCr converted to RGB"),
    "RGBX": ("RGB", None),
    "La": ("LA", "premultiplied alpha converted to straight alpha"),
    "RGBa": ("RGBA", "premultiplied alpha converted to straight alpha"),
    "PA": ("RGBA", "palette converted to RGBA"),
}


class ImageError(FileFormatError):
    """An input image or file that cannot be used: the message says what was wrong and what was expected."""


@dataclass
class Image:
    """An upright image in [0, 1] with what is needed to write a result back like its source."""

    pixels: np.ndarray  # (H, W, C) float32 in [0, 1], C = 1 (grey) or 3 (RGB)
    alpha: np.ndarray | None = None  # (H, W) float32 in [0, 1], straight (not premultiplied)
    bit_depth: int = 8  # of the source's samples: 8 or 16 (16 for float TIFF)
    source: str = ""
    format: str = ""  # "PNG", "TIFF", "JPEG", "BMP", "WEBP"; "" for an array
    notes: list[str] = field(default_factory=list)  # conversions made on reading
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @property
    def is_grey(self) -> bool:
        return self.channels == 1


def check_output_size(height: int, width: int) -> None:
    """Refuse a result of `height` x `width` pixels above `MAX_OUTPUT_PIXELS` (or empty) before it is computed."""
    if height < 1 or width < 1:
        raise UsageError(f"an output of {width} x {height} pixels (W x H) is empty; expected at least 1 x 1")
    if height * width > MAX_OUTPUT_PIXELS:
        raise UsageError(f"an output of {width} x {height} pixels (W x H, {height * width / 1e6:.0f} megapixels) is "
                         f"larger than MAX_OUTPUT_PIXELS = {MAX_OUTPUT_PIXELS:,}; use a smaller scale or input")


def _check_input_size(height: int, width: int, what: object) -> None:
    if height < 1 or width < 1:
        raise ImageError(f"{what}: zero-size image of {width} x {height} pixels (W x H); expected at least 1 x 1")
    if height * width > MAX_PIXELS:
        raise ImageError(f"{what}: image of {width} x {height} pixels (W x H, {height * width / 1e6:.1f} megapixels) "
                         f"is larger than MAX_PIXELS = {MAX_PIXELS:,}; downscale or crop it first")


def _damaged(path: Path, e: Exception) -> ImageError:
    return ImageError(f"{path}: the image data could not be read, the file may be truncated or damaged ({e})")


def _samples(arr: np.ndarray, what: object, clip: bool = False) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Split (H, W) or (H, W, C) samples (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA; uint8, uint16, bool or
    float) into colour (H, W, 1 or 3) and alpha (H, W) or None, float32 in [0, 1], and their bit depth."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
        raise ImageError(f"{what}: expected an image of shape (H, W) or (H, W, C) with C = 1 (grey), 2 (grey + alpha)"
                         f", 3 (RGB) or 4 (RGBA), got shape {tuple(arr.shape)}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{what}: zero-size image of shape {tuple(arr.shape)}; expected at least 1 x 1 pixels")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind == "u" and arr.dtype.itemsize in (1, 2):
        bit_depth = 8 * arr.dtype.itemsize
        x = arr.astype(np.float32) / np.float32(2**bit_depth - 1)
    elif arr.dtype.kind == "f":
        bit_depth = 16  # no precision lost when written back
        x = arr.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            raise ImageError(f"{what}: {int(bad.sum())} samples are NaN or Inf; expected finite values in [0, 1]")
        if clip:
            np.clip(x, 0.0, 1.0, out=x)
        elif x.min() < 0 or x.max() > 1:
            raise ImageError(f"{what}: float samples range from {x.min():.4g} to {x.max():.4g}; expected values in "
                             "[0, 1] (np.clip them first if that is intended)")
    else:
        raise ImageError(f"{what}: unsupported sample type {arr.dtype}; expected uint8, uint16 or floats in [0, 1]")
    if x.shape[2] in (2, 4):
        return np.ascontiguousarray(x[:, :, :-1]), np.ascontiguousarray(x[:, :, -1]), bit_depth
    return x, None, bit_depth


def from_array(arr: np.ndarray, source: str = "array") -> Image:
    """An `Image` from samples an API user holds: (H, W) or (H, W, C) with C = 1, 2, 3 or 4 (last one alpha);
    uint8 (8 bit), uint16 (16 bit), or floats in [0, 1] (kept as 16 bit)."""
    pixels, alpha, bit_depth = _samples(arr, source)
    _check_input_size(pixels.shape[0], pixels.shape[1], source)
    return Image(pixels, alpha, bit_depth, source=source)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Samples stored with EXIF / TIFF orientation 2..8 turned upright, as `PIL.ImageOps.exif_transpose` does."""
    if orientation in (5, 6, 7, 8):
        arr = arr.swapaxes(0, 1)
    if orientation in (3, 4, 7, 8):
        arr = arr[::-1]
    if orientation in (2, 3, 6, 7):
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def _icc_space(icc: bytes) -> bytes:
    return icc[16:20]  # the profile header's data colour space: b"RGB ", b"GRAY", b"CMYK" ...


def _icc_fits(icc: bytes | None, channels: int) -> bool:
    return icc is not None and _icc_space(icc) == (b"GRAY" if channels == 1 else b"RGB ")


def read_image(path: str | Path) -> Image:
    """Read an image file into an upright `Image` (float32 in [0, 1], alpha apart); refuse anything unusable
    with an `ImageError` naming the file. Of a multi-frame file the first frame is taken (noted)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image file: {path}")
    if not path.is_file():
        raise ImageError(f"{path}: not a file; expected an image file ({_FORMAT_NAMES})")
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:
        raise ImageError(f"{path}: empty file (0 bytes); expected an image file ({_FORMAT_NAMES})")
    notes: list[str] = []
    decoded = _read_tiff(path, notes) if head[:4] in _TIFF_MAGIC else None
    samples, orientation, icc, fmt = decoded or _read_pillow(path, head, notes)
    if orientation in range(2, 9):
        samples = _orient(samples, orientation)
        notes.append(f"{'TIFF' if decoded else 'EXIF'} orientation {orientation} applied")
    if samples.dtype.kind == "f":
        notes.append("float samples read as float32, written back as 16 bit")
    pixels, alpha, bit_depth = _samples(samples, path)
    if icc is not None and not _icc_fits(icc, pixels.shape[2]):
        notes.append(f"ICC profile dropped: it describes {_icc_space(icc).decode('latin-1').strip()!r} colour, "
                     f"not the {'grey' if pixels.shape[2] == 1 else 'RGB'} pixels read")
        icc = None
    return Image(pixels, alpha, bit_depth, source=str(path), format=fmt, notes=notes, icc_profile=icc)


def _read_pillow(path: Path, head: bytes, notes: list[str]) -> tuple[np.ndarray, int, bytes | None, str]:
    """(samples, EXIF orientation, ICC profile, format) of a file Pillow opens."""
    try:
        with warnings.catch_warnings():  # files past Pillow's warning size are past MAX_PIXELS: refused below
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            img = PIL.Image.open(path, formats=_PIL_FORMATS)
    except PIL.Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image is larger than MAX_PIXELS = {MAX_PIXELS:,} ({e}); downscale or crop it "
                         "first") from e
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: not a recognised image ({e}); expected a {_FORMAT_NAMES} file") from e
    with img:
        _check_input_size(img.height, img.width, path)  # from the header: no pixel decoded yet
        frames = getattr(img, "n_frames", 1)
        try:
            img.load()  # decodes every pixel: truncated files fail here (LOAD_TRUNCATED_IMAGES stays False)
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error ...
            raise _damaged(path, e) from e
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        icc = img.info.get("icc_profile") or None
        fmt = "JPEG" if img.format == "MPO" else img.format
        png16_colour = img.format == "PNG" and head[24] == 16 and head[25] != 0  # IHDR: bit depth, colour type
        samples = _read_png16(path) if png16_colour else _pil_samples(img, path, notes)
    if frames > 1:
        notes.append(f"first of {frames} frames used")
    return samples, orientation, icc, fmt


def _pil_samples(img: PIL.Image.Image, path: Path, notes: list[str]) -> np.ndarray:
    """A loaded Pillow image as (H, W[, C]) uint8 / uint16 / float32 samples, converted where needed (noted)."""
    mode, note = img.mode, None
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info else "RGB"
        note = f"palette converted to {mode}"
    elif mode in ("L", "RGB") and "transparency" in img.info:
        mode, note = "LA" if mode == "L" else "RGBA", "transparent colour converted to alpha"
    elif mode in _PIL_CONVERSIONS:
        mode, note = _PIL_CONVERSIONS[mode]
    if mode != img.mode:
        img = img.convert(mode)
        if note:
            notes.append(note)
    arr = np.asarray(img)
    if mode in ("L", "LA", "RGB", "RGBA", "F", "I;16", "I;16L", "I;16B", "I;16N"):
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)
    if mode == "I":  # 32-bit integers: taken as 16-bit grey when they fit
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(f"{path}: 32-bit integer samples range from {arr.min()} to {arr.max()}; expected "
                             "0 ... 65535 (16-bit grey)")
        return arr.astype(np.uint16)
    raise ImageError(f"{path}: unsupported image mode {img.mode!r}; expected grey, RGB, RGBA, palette, CMYK or "
                     "16-bit grey")


def _read_png16(path: Path) -> np.ndarray:
    """(H, W, C) uint16 samples of a 16-bit RGB, RGBA or grey + alpha PNG, which Pillow would cut to 8 bits."""
    try:
        width, height, rows, info = png.Reader(filename=str(path)).read()
        samples = np.vstack([np.frombuffer(row, np.uint16) for row in rows])  # rows: native-order array('H')
    except (png.Error, ValueError, EOFError, OSError, zlib.error) as e:
        raise _damaged(path, e) from e
    samples = samples.reshape(height, width, info["planes"])
    if info.get("transparent") is not None:  # tRNS: one colour stands for transparent
        opaque = (samples != np.asarray(info["transparent"], np.uint16)).any(axis=2, keepdims=True)
        samples = np.concatenate([samples, np.where(opaque, 65535, 0).astype(np.uint16)], axis=2)
    return samples


def _read_tiff(path: Path, notes: list[str]) -> tuple[np.ndarray, int, bytes | None, str] | None:
    """(samples, TIFF orientation, ICC profile, "TIFF") of an 8/16-bit or float grey / RGB(A) TIFF, or None
    for the kinds left to Pillow (palette, CMYK, YCbCr, other sample types)."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # a header tifffile rejects: Pillow reads it or says what is wrong
        return None
    with tif:
        try:
            page = tif.pages.first
        except IndexError as e:  # the first page's offset points past the end of the file
            raise _damaged(path, ValueError("no readable first page")) from e
        colour = {tifffile.PHOTOMETRIC.MINISBLACK: 1, tifffile.PHOTOMETRIC.MINISWHITE: 1,
                  tifffile.PHOTOMETRIC.RGB: 3}.get(page.photometric)
        if colour is None or getattr(page.dtype, "name", None) not in _TIFF_DTYPES or page.imagedepth > 1:
            return None
        if page.samplesperpixel - colour > 1:
            raise ImageError(f"{path}: TIFF with {page.samplesperpixel} samples per pixel ({page.photometric.name}); "
                             "expected grey, grey + alpha, RGB or RGBA (at most 4 channels)")
        if int(page.compression) not in tifffile.TIFF.DECOMPRESSORS:  # a codec tifffile takes from imagecodecs
            if page.bitspersample > 8 and page.samplesperpixel > 1:  # Pillow would cut these to 8 bits
                raise ImageError(f"{path}: {page.bitspersample}-bit TIFF with {page.samplesperpixel} samples per "
                                 f"pixel and {page.compression.name} compression needs the imagecodecs package "
                                 "(pip install imagecodecs)")
            return None
        _check_input_size(page.imagelength, page.imagewidth, path)  # from the header: no pixel decoded yet
        if len(tif.pages) > 1:
            notes.append(f"first of {len(tif.pages)} pages used")
        try:
            samples = page.asarray()
        except Exception as e:  # tifffile raises ValueError, zlib.error, TiffFileError ...
            raise _damaged(path, e) from e
        orientation = int(page.tags.valueof(_TIFF_ORIENTATION, 1))
        icc = page.tags.valueof(_TIFF_ICC)
        extra = page.extrasamples[0] if page.extrasamples else None
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and samples.ndim == 3:
            samples = np.moveaxis(samples, 0, -1)
        miniswhite = page.photometric == tifffile.PHOTOMETRIC.MINISWHITE
    if samples.dtype == bool:
        notes.append("bilevel converted to grey")
    if miniswhite:
        grey = samples[..., 0] if samples.ndim == 3 else samples
        grey[...] = 1 - grey if grey.dtype.kind == "f" else ~grey  # ~ on unsigned integers: maxval - x
        notes.append("MINISWHITE grey inverted (0 = black)")
    if extra == tifffile.EXTRASAMPLE.ASSOCALPHA:
        samples = _unpremultiply(samples)
        notes.append("premultiplied alpha converted to straight alpha")
    return samples, orientation, bytes(icc) if icc else None, "TIFF"


def _unpremultiply(samples: np.ndarray) -> np.ndarray:
    """Colour divided by alpha (the last sample) where alpha > 0, in the samples' own type."""
    maxval = 1.0 if samples.dtype.kind == "f" else float(np.iinfo(samples.dtype).max)
    x = samples.astype(np.float64)
    a = x[..., -1:]
    np.divide(x[..., :-1] * maxval, a, out=x[..., :-1], where=a > 0)
    x[..., :-1] = np.clip(x[..., :-1], 0, maxval)
    return x.astype(samples.dtype) if samples.dtype.kind == "f" else np.round(x).astype(samples.dtype)


def _format_of(path: Path) -> str:
    suffix = split_suffix(path, WRITE_SUFFIXES)[1]
    if not suffix:
        raise ImageError(f"{path}: cannot write file type {path.suffix!r}; expected one of {WRITE_SUFFIXES}")
    return {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, "JPEG")


def write_image(path: str | Path, image: Image | np.ndarray, bit_depth: int | None = None,
                alpha: np.ndarray | None = None, quality: int = 95) -> Path:
    """Write an `Image` or an (H, W[, C]) array (floats clipped to [0, 1]) as PNG, TIFF or JPEG (by suffix),
    atomically: 8 or 16 bit (default: the image's own), `alpha` overriding the image's, its ICC profile kept.

    JPEG is 8-bit RGB or grey: an alpha channel is dropped; `quality` (1 ... 100) applies to it alone.
    Reading the file back gives the same 8- or 16-bit integers as `np.round(x * maxval)`.
    """
    path = Path(path)
    fmt = _format_of(path)
    what = f"image to write to {path}"
    pixels = image.pixels if isinstance(image, Image) else image
    colour, own_alpha, depth = _samples(pixels, what, clip=True)
    icc = None
    if isinstance(image, Image):
        depth, icc = image.bit_depth, image.icc_profile
        own_alpha = image.alpha if image.alpha is not None else own_alpha
    alpha = own_alpha if alpha is None else alpha
    if bit_depth is not None:
        depth = bit_depth
    if fmt == "JPEG":
        if bit_depth == 16:
            raise UsageError(f"{path}: JPEG holds 8-bit samples only; write PNG or TIFF for 16 bit")
        depth, alpha = 8, None
    if depth not in (8, 16):
        raise UsageError(f"{path}: cannot write {depth}-bit samples; expected bit_depth 8 or 16")
    if fmt == "JPEG" and not 1 <= quality <= 100:
        raise UsageError(f"{path}: JPEG quality {quality} is out of range; expected 1 ... 100")
    height, width, channels = colour.shape
    check_output_size(height, width)
    icc = icc if _icc_fits(icc, channels) else None
    if alpha is not None:
        alpha = _alpha_plane(alpha, f"alpha of the {what}")
        if alpha.shape != (height, width):
            raise ImageError(f"{what}: alpha has shape {alpha.shape}, expected (H, W) = {(height, width)} like the "
                             "colour")
        colour = np.concatenate([colour, alpha[:, :, None]], axis=2)
    maxval = 2**depth - 1
    q = np.round(colour * maxval).astype(np.uint8 if depth == 8 else np.uint16)  # (H, W, C)
    writers = {"PNG": lambda tmp: _write_png(tmp, q, icc), "TIFF": lambda tmp: _write_tiff(tmp, q, icc),
               "JPEG": lambda tmp: _write_jpeg(tmp, q, icc, quality)}
    return atomic_write(path, writers[fmt])


def _write_png(tmp: Path, q: np.ndarray, icc: bytes | None) -> None:
    height, width, c = q.shape
    if q.dtype == np.uint8:
        PIL.Image.fromarray(q[:, :, 0] if c == 1 else q).save(tmp, format="PNG", icc_profile=icc)
        return
    writer = png.Writer(width, height, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16)
    buf = io.BytesIO()
    writer.write_packed(buf, q.astype(">u2").view(np.uint8).reshape(height, -1))  # packed rows: big-endian bytes
    chunks = list(png.Reader(bytes=buf.getvalue()).chunks())
    if icc:  # pypng writes no iCCP: name, NUL, compression method 0, zlib stream; right after IHDR
        chunks.insert(1, (b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)))
    with open(tmp, "wb") as f:
        png.write_chunks(f, chunks)


def _write_tiff(tmp: Path, q: np.ndarray, icc: bytes | None) -> None:
    c = q.shape[2]
    tifffile.imwrite(tmp, q[:, :, 0] if c == 1 else q, photometric="minisblack" if c <= 2 else "rgb",
                     planarconfig=None if c == 1 else "contig", extrasamples=("unassalpha",) if c in (2, 4) else None,
                     compression="zlib", iccprofile=icc, metadata=None)


def _write_jpeg(tmp: Path, q: np.ndarray, icc: bytes | None, quality: int) -> None:
    img = PIL.Image.fromarray(q[:, :, 0] if q.shape[2] == 1 else q)
    img.save(tmp, format="JPEG", quality=quality, subsampling=0, icc_profile=icc)  # 4:4:4: no colour blur


def _alpha_plane(alpha: np.ndarray, what: str) -> np.ndarray:
    alpha = np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[2] == 1:
        alpha = alpha[:, :, 0]
    if alpha.ndim != 2 or alpha.dtype.kind not in "buf":
        raise ImageError(f"{what}: expected an (H, W) array of numbers, got shape {alpha.shape} of {alpha.dtype}")
    if alpha.dtype.kind == "u":
        alpha = alpha / np.float32(np.iinfo(alpha.dtype).max)
    alpha = alpha.astype(np.float32)
    if not np.isfinite(alpha).all():
        raise ImageError(f"{what}: holds NaN or Inf; expected finite values in [0, 1]")
    return np.clip(alpha, 0.0, 1.0)


def resize_alpha(alpha: np.ndarray, height: int, width: int) -> np.ndarray:
    """An (H, W) alpha channel resized to `height` x `width` (bicubic, clipped to [0, 1]), float32: the colour of
    a super-resolved image goes through the model, its alpha through this."""
    alpha = _alpha_plane(alpha, "alpha to resize")
    check_output_size(height, width)
    resized = PIL.Image.fromarray(alpha).resize((width, height), PIL.Image.Resampling.BICUBIC)  # mode "F"
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def image_stem(path: str | Path) -> str:
    """An image file's name without its image suffix (`photo.tiff` -> `photo`)."""
    return split_suffix(path, IMAGE_SUFFIXES)[0]


def output_name(path: str | Path, suffix_tag: str, ext: str | None = None) -> str:
    """The file name of a result for input `path`: `photo.jpg`, "x4" -> `photo_x4.png`. PNG (lossless) unless
    `ext` says otherwise; the name is safe on every file system."""
    ext = ".png" if ext is None else "." + ext.lower().lstrip(".")
    if ext not in WRITE_SUFFIXES:
        raise UsageError(f"cannot write file type {ext!r}; expected one of {WRITE_SUFFIXES}")
    tag = safe_stem(suffix_tag, default="")
    return f"{safe_stem(path, IMAGE_SUFFIXES, default='image')}{'_' + tag if tag else ''}{ext}"
