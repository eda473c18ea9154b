import re

import numpy as np
import PIL.Image
import PIL.ImageCms
import PIL.ImageOps
import png
import pytest
import tifffile

from ditlab.core.errors import InputError, UsageError
from ditlab.imaging import io as iio
from ditlab.imaging.io import ImageError, from_array, read_image, write_image

RNG = np.random.default_rng(0)
SRGB = PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()


def samples(image, bit_depth):
    """The integers an image holds (colour then alpha), as written to an 8- or 16-bit file."""
    x = image.pixels if image.alpha is None else np.concatenate([image.pixels, image.alpha[..., None]], axis=2)
    return np.round(x * (2**bit_depth - 1)).astype(np.uint8 if bit_depth == 8 else np.uint16)


def random_samples(channels, bit_depth, shape=(7, 9)):
    return RNG.integers(0, 2**bit_depth, (*shape, channels)).astype(np.uint8 if bit_depth == 8 else np.uint16)


def orientation_exif(value):
    exif = PIL.Image.Exif()
    exif[0x0112] = value
    return exif


# --- round trips ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_round_trip_is_exact(tmp_path, ext, channels, bit_depth):
    a = random_samples(channels, bit_depth)
    path = write_image(tmp_path / f"x{ext}", from_array(a))
    img = read_image(path)
    assert img.bit_depth == bit_depth and img.format == ("PNG" if ext == ".png" else "TIFF")
    assert img.channels == (1 if channels <= 2 else 3) and img.is_grey == (channels <= 2)
    assert (img.alpha is not None) == (channels in (2, 4))
    assert img.pixels.dtype == np.float32 and (img.height, img.width) == (7, 9)
    np.testing.assert_array_equal(samples(img, bit_depth), a)
    assert img.notes == []


def test_16_bit_png_read_by_pypng_keeps_every_bit(tmp_path):
    a = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 3000 + 7  # low bytes differ: not 8-bit data
    path = write_image(tmp_path / "rgb16.png", a)
    with PIL.Image.open(path) as pil:
        assert pil.mode == "RGB"  # Pillow alone would give 8 bits
    np.testing.assert_array_equal(samples(read_image(path), 16), a)


def test_16_bit_png_written_by_another_tool(tmp_path):
    a = random_samples(3, 16, (5, 4))
    a[0, 0] = (1, 2, 3)
    with open(tmp_path / "t.png", "wb") as f:  # adaptive filters, a transparent colour (tRNS)
        png.Writer(4, 5, greyscale=False, bitdepth=16, transparent=(1, 2, 3)).write(f, a.reshape(5, -1))
    img = read_image(tmp_path / "t.png")
    np.testing.assert_array_equal(samples(img, 16)[..., :3], a)
    assert img.alpha[0, 0] == 0 and (img.alpha.ravel()[1:] == 1).all()


def test_16_bit_grey_png_from_pillow(tmp_path):
    a = random_samples(1, 16)[..., 0]
    PIL.Image.fromarray(a).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.bit_depth == 16 and img.is_grey
    np.testing.assert_array_equal(samples(img, 16)[..., 0], a)


def test_float_arrays_and_tiffs(tmp_path):
    a = RNG.random((6, 5, 3)).astype(np.float32)
    img = from_array(a)
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.pixels, a)
    tifffile.imwrite(tmp_path / "f.tif", a, photometric="rgb")
    img = read_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(img.pixels, a)
    assert img.bit_depth == 16 and any("float" in n for n in img.notes)
    out = write_image(tmp_path / "out.png", img)
    np.testing.assert_allclose(read_image(out).pixels, a, atol=0.5 / 65535)


def test_write_clips_floats_and_rounds(tmp_path):
    a = np.array([[-0.5, 0.4 / 255, 0.6 / 255, 1.0, 7.0]], np.float64)
    img = read_image(write_image(tmp_path / "c.png", a, bit_depth=8))
    np.testing.assert_array_equal(samples(img, 8)[0, :, 0], [0, 0, 1, 255, 255])


def test_jpeg_is_approximate_and_drops_alpha(tmp_path):
    y, x = np.mgrid[0:32, 0:48] / 48.0
    a = np.stack([x, y, 0.5 * (x + y), np.full_like(x, 0.5)], axis=2).astype(np.float32)
    img = read_image(write_image(tmp_path / "s.jpg", a, quality=95))
    assert img.format == "JPEG" and img.bit_depth == 8 and img.alpha is None and img.channels == 3
    assert np.abs(img.pixels - a[..., :3]).mean() < 0.01
    with pytest.raises(UsageError, match="8-bit"):
        write_image(tmp_path / "s16.jpg", a, bit_depth=16)


def test_alpha_argument_overrides_and_is_kept(tmp_path):
    colour = RNG.random((4, 6, 3))
    alpha = np.linspace(0, 1, 24).reshape(4, 6)
    img = read_image(write_image(tmp_path / "a.png", colour, alpha=alpha, bit_depth=16))
    np.testing.assert_allclose(img.alpha, alpha, atol=0.5 / 65535)
    with pytest.raises(ImageError, match="alpha has shape"):
        write_image(tmp_path / "b.png", colour, alpha=alpha.T)


@pytest.mark.parametrize(("ext", "bit_depth"), [(".png", 8), (".png", 16), (".tif", 8), (".tif", 16), (".jpg", 8)])
def test_icc_profile_kept(tmp_path, ext, bit_depth):
    img = from_array(random_samples(3, bit_depth))
    img.icc_profile = SRGB
    assert read_image(write_image(tmp_path / f"p{ext}", img)).icc_profile == SRGB
    img.pixels = img.pixels[..., :1]  # an RGB profile does not describe grey pixels: not written
    assert read_image(write_image(tmp_path / f"g{ext}", img)).icc_profile is None


# --- conversions, each with a note ---------------------------------------------------------------------------------

def test_exif_orientation_6_applied_to_jpeg(tmp_path):
    PIL.Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "o.jpg", exif=orientation_exif(6))
    img = read_image(tmp_path / "o.jpg")
    assert (img.height, img.width) == (40, 20)
    assert "EXIF orientation 6 applied" in img.notes


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientations_match_pillow(tmp_path, orientation):
    a = random_samples(3, 8, (3, 5))
    PIL.Image.fromarray(a).save(tmp_path / "o.png", exif=orientation_exif(orientation))
    with PIL.Image.open(tmp_path / "o.png") as pil:
        expected = np.asarray(PIL.ImageOps.exif_transpose(pil))
    np.testing.assert_array_equal(samples(read_image(tmp_path / "o.png"), 8), expected)


def test_tiff_orientation_tag(tmp_path):
    a = random_samples(1, 16, (3, 5))[..., 0]
    tifffile.imwrite(tmp_path / "o.tif", a, extratags=[(274, "H", 1, 8, True)])
    img = read_image(tmp_path / "o.tif")
    np.testing.assert_array_equal(samples(img, 16)[..., 0], np.rot90(a))
    assert "TIFF orientation 8 applied" in img.notes


def test_cmyk_jpeg_converted(tmp_path):
    fake_cmyk_icc = bytes(16) + b"CMYK" + bytes(108)
    PIL.Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", icc_profile=fake_cmyk_icc)
    img = read_image(tmp_path / "c.jpg")
    assert img.channels == 3 and "CMYK converted to RGB" in img.notes
    assert img.icc_profile is None and any("ICC profile dropped" in n for n in img.notes)
    np.testing.assert_allclose(img.pixels.mean(axis=(0, 1)), [1, 0, 0], atol=0.05)


def test_palette_png_converted(tmp_path):
    rgb = PIL.Image.fromarray(random_samples(3, 8))
    rgb.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.channels == 3 and img.alpha is None and "palette converted to RGB" in img.notes
    pal = PIL.Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.save(tmp_path / "t.png", transparency=1)
    img = read_image(tmp_path / "t.png")
    assert "palette converted to RGBA" in img.notes and (img.alpha == 0).all()


def test_bilevel_and_transparent_grey(tmp_path):
    PIL.Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "b.png")
    img = read_image(tmp_path / "b.png")
    assert img.is_grey and "bilevel converted to grey" in img.notes
    np.testing.assert_array_equal(img.pixels[..., 0], np.eye(4))
    PIL.Image.fromarray(np.full((2, 3), 9, np.uint8)).save(tmp_path / "t.png", transparency=9)
    img = read_image(tmp_path / "t.png")
    assert img.is_grey and (img.alpha == 0).all() and "transparent colour converted to alpha" in img.notes


def test_bilevel_tiff_matches_pillow(tmp_path):
    tifffile.imwrite(tmp_path / "b.tif", np.eye(5, dtype=bool))
    with PIL.Image.open(tmp_path / "b.tif") as pil:
        expected = np.asarray(pil.convert("L")) / 255.0
    img = read_image(tmp_path / "b.tif")
    np.testing.assert_array_equal(img.pixels[..., 0], expected)


def test_multi_page_tiff_takes_the_first_page(tmp_path):
    pages = random_samples(3, 8, (3, 4, 5))
    tifffile.imwrite(tmp_path / "m.tif", pages[..., 0], photometric="minisblack", metadata=None)
    img = read_image(tmp_path / "m.tif")
    np.testing.assert_array_equal(samples(img, 8)[..., 0], pages[0, ..., 0])
    assert "first of 3 pages used" in img.notes


def test_lzw_tiff_falls_back_to_pillow(tmp_path):
    a = random_samples(3, 8)
    PIL.Image.fromarray(a).save(tmp_path / "l.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(samples(read_image(tmp_path / "l.tif"), 8), a)


def test_16_bit_colour_tiff_without_its_codec_is_refused_not_cut_to_8_bits(tmp_path, monkeypatch):
    path = write_image(tmp_path / "z.tif", random_samples(3, 16))
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", {1: None})  # as if zlib needed imagecodecs
    refused(path, "16-bit TIFF with 3 samples per pixel and .* needs the imagecodecs package")


def test_tiff_minis_white_and_premultiplied_alpha(tmp_path):
    tifffile.imwrite(tmp_path / "w.tif", np.array([[0, 255]], np.uint8), photometric="miniswhite")
    img = read_image(tmp_path / "w.tif")
    np.testing.assert_array_equal(img.pixels[0, :, 0], [1, 0])
    rgba = np.array([[[64, 32, 0, 128], [0, 0, 0, 0]]], np.uint8)  # colour premultiplied by alpha
    tifffile.imwrite(tmp_path / "p.tif", rgba, photometric="rgb", extrasamples=["assocalpha"])
    img = read_image(tmp_path / "p.tif")
    np.testing.assert_allclose(img.pixels[0, 0], [128 / 255, 64 / 255, 0], atol=1 / 255)
    np.testing.assert_allclose(img.alpha[0], [128 / 255, 0])
    assert "premultiplied alpha converted to straight alpha" in img.notes


@pytest.mark.parametrize(("ext", "options"), [(".bmp", {}), (".webp", {"lossless": True})])
def test_bmp_and_webp(tmp_path, ext, options):
    a = random_samples(3, 8)
    PIL.Image.fromarray(a).save(tmp_path / f"b{ext}", **options)
    img = read_image(tmp_path / f"b{ext}")
    assert img.format == ext[1:].upper()
    np.testing.assert_array_equal(samples(img, 8), a)


# --- refusals: one line naming the file ----------------------------------------------------------------------------

def refused(path, match):
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and isinstance(info.value, InputError)
    assert re.search(match, message.removeprefix(f"{path}: ")), message


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("hello, this is text\n" * 10)
    refused(tmp_path / "notes.png", "not a recognised image")


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    refused(tmp_path / "e.jpg", "empty file")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
def test_truncated_files(tmp_path, ext):
    y, x = np.mgrid[0:64, 0:64]
    a = ((x * 7 + y * 13) % 256).astype(np.uint8)[..., None].repeat(3, axis=2)
    path = tmp_path / f"full{ext}"
    PIL.Image.fromarray(a).save(path, **({"compression": "tiff_deflate"} if ext == ".tif" else {}))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(path, "may be truncated")


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_truncated_16_bit_files(tmp_path, ext):
    path = write_image(tmp_path / f"h{ext}", random_samples(3, 16, (64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(path, "may be truncated")


def test_size_checked_from_the_header(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", random_samples(3, 8, (20, 30)))
    tif = write_image(tmp_path / "big.tif", random_samples(3, 16, (20, 30)))
    monkeypatch.setattr(iio, "MAX_PIXELS", 500)
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    refused(path, "30 x 20 pixels .* larger than MAX_PIXELS")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, **kw: pytest.fail("pixels decoded"))
    refused(tif, "larger than MAX_PIXELS")
    with pytest.raises(ImageError, match="larger than MAX_PIXELS"):
        from_array(np.zeros((30, 20)))


def test_pillow_decompression_bomb_becomes_our_message(tmp_path, monkeypatch):
    path = write_image(tmp_path / "bomb.png", random_samples(3, 8, (20, 30)))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    refused(path, "larger than MAX_PIXELS")


def test_bad_float_tiffs(tmp_path):
    a = np.full((3, 4), 0.5, np.float32)
    a[1, 1] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", a)
    refused(tmp_path / "nan.tif", "NaN or Inf")
    tifffile.imwrite(tmp_path / "hdr.tif", np.full((3, 4), 4.0, np.float32))
    refused(tmp_path / "hdr.tif", r"expected values in \[0, 1\]")


def test_too_many_tiff_channels(tmp_path):
    tifffile.imwrite(tmp_path / "c5.tif", random_samples(5, 8), photometric="rgb", extrasamples=[2, 2])
    refused(tmp_path / "c5.tif", "at most 4 channels")


@pytest.mark.parametrize(("arr", "match"), [
    (np.zeros((0, 5)), "zero-size"),
    (np.zeros((4, 0, 3)), "zero-size"),
    (np.full((3, 3), np.nan), "NaN or Inf"),
    (np.zeros((3, 3, 5)), "expected an image of shape"),
    (np.zeros(9), "expected an image of shape"),
    (np.zeros((3, 3), np.int64), "unsupported sample type"),
    (np.full((3, 3), 1.5), r"expected values in \[0, 1\]"),
])
def test_bad_arrays(arr, match):
    with pytest.raises(ImageError, match=match) as info:
        from_array(arr, source="my-array")
    assert "my-array" in str(info.value)


def test_bad_writes(tmp_path):
    with pytest.raises(ImageError, match="cannot write file type '.gif'"):
        write_image(tmp_path / "x.gif", np.zeros((2, 2)))
    with pytest.raises(UsageError, match="bit_depth 8 or 16"):
        write_image(tmp_path / "x.png", np.zeros((2, 2)), bit_depth=12)
    with pytest.raises(ImageError, match="NaN"):
        write_image(tmp_path / "x.png", np.full((2, 2), np.nan))
    assert list(tmp_path.iterdir()) == []


# --- atomic writes, sizes, names -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ext", "bit_depth", "target", "name"), [
    (".png", 8, PIL.Image.Image, "save"),
    (".png", 16, png, "write_chunks"),
    (".tif", 16, tifffile, "imwrite"),
    (".jpg", 8, PIL.Image.Image, "save"),
])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, ext, bit_depth, target, name):
    def broken(*args, **kwargs):  # the temporary file already exists when the encoder fails
        raise OSError("disk full")

    monkeypatch.setattr(target, name, broken)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / f"out{ext}", random_samples(3, bit_depth), bit_depth=bit_depth)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_image(tmp_path / "keep.png", np.zeros((2, 2)), bit_depth=8)
    before = path.read_bytes()

    def half_then_fail(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", half_then_fail)
    with pytest.raises(OSError):
        write_image(path, np.ones((2, 2)), bit_depth=8)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_check_output_size(tmp_path, monkeypatch):
    iio.check_output_size(8192 * 4, 8192 * 4)
    with pytest.raises(UsageError, match="MAX_OUTPUT_PIXELS"):
        iio.check_output_size(32769, 32768)
    monkeypatch.setattr(iio, "MAX_OUTPUT_PIXELS", 10)
    with pytest.raises(UsageError, match="4 x 3 pixels"):
        write_image(tmp_path / "big.png", np.zeros((3, 4)))
    assert list(tmp_path.iterdir()) == []


def test_resize_alpha():
    alpha = np.zeros((4, 6), np.float32)
    alpha[:, 3:] = 1
    out = iio.resize_alpha(alpha, 16, 24)
    assert out.shape == (16, 24) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1  # bicubic overshoot clipped
    assert (out[:, :8] == 0).all() and (out[:, -8:] == 1).all()
    np.testing.assert_allclose(iio.resize_alpha(np.full((3, 3), 0.25), 7, 5), 0.25, atol=1e-6)
    with pytest.raises(ImageError, match="NaN"):
        iio.resize_alpha(np.full((2, 2), np.nan), 4, 4)


def test_names():
    assert iio.image_stem("dir/photo.final.TIFF") == "photo.final"
    assert iio.output_name("dir/photo.jpg", "x4") == "photo_x4.png"
    assert iio.output_name("scan 01.tif", "x2", ext="tif") == "scan-01_x2.tif"
    assert iio.output_name("photo.webp", "") == "photo.png"
    with pytest.raises(UsageError, match="cannot write file type '.gif'"):
        iio.output_name("photo.png", "x2", ext="gif")
