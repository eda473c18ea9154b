import numpy as np
import pytest

from ditlab.core.errors import InputError
from ditlab.imaging.io import from_array, read_image, write_image
from ditlab.imaging.pipeline import Enhancer, restore, upscale


@pytest.fixture
def sr(tiny_nets):
    return Enhancer("sr", weights=tiny_nets["sr"])


def rgb(h=20, w=28, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_upscale_x4_and_x2_any_aspect(sr):
    out = upscale(rgb(), 4, enhancer=sr)
    assert out.pixels.shape == (80, 112, 3) and out.pixels.dtype == np.float32
    assert 0 <= out.pixels.min() and out.pixels.max() <= 1
    out2 = upscale(rgb(), 2, "bicubic", enhancer=sr)
    assert out2.pixels.shape == (40, 56, 3)
    assert any("x2 (bicubic)" in n for n in out2.notes)


def test_grey_stays_grey_and_alpha_is_kept(sr):
    grey = upscale(from_array((rgb()[..., 0] * 255).astype(np.uint8)), 4, enhancer=sr)
    assert grey.pixels.shape == (80, 112, 1)
    rgba = np.concatenate([rgb(), np.linspace(0, 1, 20 * 28, dtype=np.float32).reshape(20, 28, 1)], axis=2)
    out = upscale(from_array(rgba), 4, enhancer=sr)
    assert out.alpha is not None and out.alpha.shape == (80, 112)
    assert out.alpha[0, 0] < 0.1 and out.alpha[-1, -1] > 0.9


def test_sixteen_bit_file_round_trip(sr, tmp_path):
    px = (rgb() * 65535).astype(np.uint16)
    write_image(tmp_path / "in.png", from_array(px))
    img = read_image(tmp_path / "in.png")
    assert img.bit_depth == 16
    out = upscale(img, 4, enhancer=sr)
    write_image(tmp_path / "out.png", out)
    back = read_image(tmp_path / "out.png")
    assert back.bit_depth == 16 and back.pixels.shape == (80, 112, 3)


def test_colour_fix_keeps_the_mean_colour(sr):
    x = rgb(32, 32) * 0.5 + 0.25
    for colour in ("wavelet", "adain"):
        out = upscale(x, 4, enhancer=sr, colour=colour).pixels
        assert np.abs(out.mean((0, 1)) - x.mean((0, 1))).max() < 2 / 255


def test_restore_keeps_the_size(tiny_nets):
    enh = Enhancer("restore", weights=tiny_nets["restore"])
    for task in ("denoise", "deblur", "jpeg"):
        out = restore(rgb(), task, enhancer=enh)
        assert out.pixels.shape == (20, 28, 3)


def test_bad_requests_are_refused(sr, tiny_nets):
    with pytest.raises(InputError, match=r"scale must be one of \(2, 4\)"):
        upscale(rgb(), 3, enhancer=sr)
    with pytest.raises(InputError, match="degradation"):
        upscale(rgb(), 4, "gaussian", enhancer=sr)
    with pytest.raises(InputError, match="task must be one of"):
        restore(rgb(), "inpaint", enhancer=sr)
    with pytest.raises(InputError, match="x1 network"):
        Enhancer("sr", weights=tiny_nets["restore"]).model  # noqa: B018
    with pytest.raises(InputError, match="steps"):
        Enhancer("sr", steps=0)
    with pytest.raises(InputError, match="expected an image"):
        upscale([1, 2, 3], 4, enhancer=sr)
    with pytest.raises(InputError):
        upscale(np.zeros((0, 4, 3), np.float32), 4, enhancer=sr)


def test_rows_streamed_through_the_colour_fix_equal_the_whole_image_fix(sr, tiny_nets):
    """The output is built band by band (halved, colour-fixed as rows finish): the same as fixing the whole
    image at once, for x4, x2 and AdaIN."""
    import torch
    import torch.nn.functional as F

    from ditlab.imaging.models import upsample
    from ditlab.imaging.superres import colour_fix

    x = rgb(72, 20, seed=3)
    enh = Enhancer("sr", weights=tiny_nets["sr"], tile=16, overlap=4)
    full = torch.from_numpy(enh.run(x, 1)).permute(2, 0, 1)[None]
    lr = torch.from_numpy(x).permute(2, 0, 1)[None]
    half = F.interpolate(full, size=(144, 40), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    cases = {(4, "wavelet"): colour_fix(full, upsample(lr, 4).clamp(0, 1), "wavelet"),
             (2, "wavelet"): colour_fix(half, upsample(lr, 2).clamp(0, 1), "wavelet"),
             (4, "adain"): colour_fix(full, upsample(lr, 4).clamp(0, 1), "adain")}
    for (scale, colour), want in cases.items():
        got = upscale(x, scale, enhancer=enh, colour=colour).pixels
        want = want[0].permute(1, 2, 0).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4, (scale, colour, np.abs(got - want).max())
