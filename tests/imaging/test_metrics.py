"""The field's SR metrics with its conventions: MATLAB rgb2ycbcr luma, Y-PSNR / SSIM with a border crop, RGB PSNR,
colour bias and tile-seam energy."""


import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ditlab.core.errors import InputError
from ditlab.imaging.metrics import (
    colour_bias,
    evaluate,
    max_colour_bias,
    psnr_rgb,
    psnr_y,
    rgb_to_y,
    seam_energy,
    seam_energy_ratio,
    ssim_y,
)

PSNR_OF_ONE_LEVEL = 20 * np.log10(255.0)  # MSE of 1 on the 0..255 scale (or of 1/255 in [0, 1]): 48.13 dB


def _image(h=48, w=40, c=3, seed=0):
    return np.random.default_rng(seed).uniform(0.1, 0.9, (h, w, c))


def _smooth(h=64, w=64, seed=0):
    """A smooth RGB image in [0.1, 0.9]: random low-frequency sinusoids per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [sum(np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy) + rng.uniform(0, 6))
                 for _ in range(3)) for _ in range(3)]
    return 0.5 + 0.4 * np.stack(chans, -1) / 3


def test_rgb_to_y_matches_matlab_rgb2ycbcr_by_hand():
    colours = {(1, 1, 1): 235.0, (0, 0, 0): 16.0, (1, 0, 0): 16 + 65.481, (0, 1, 0): 16 + 128.553,
               (0, 0, 1): 16 + 24.966}
    for rgb, y in colours.items():
        out = rgb_to_y(np.broadcast_to(np.array(rgb, float), (2, 3, 3)))
        assert out.shape == (2, 3) and out.dtype == np.float64
        np.testing.assert_allclose(out, y, atol=1e-9)
    # grey: the channel itself is Y, on the 0..255 scale; (H, W) and (H, W, 1) alike
    np.testing.assert_allclose(rgb_to_y(np.full((4, 4), 0.5)), 127.5)
    np.testing.assert_allclose(rgb_to_y(np.full((4, 4, 1), 0.2)), 51.0)
    with pytest.raises(InputError, match=r"\(4, 4, 2\)"):
        rgb_to_y(np.zeros((4, 4, 2)))


def test_psnr_of_a_known_offset():
    ref = _image()
    # +d on R, G and B moves Y by 219 d (the weights' sum): d = 1/219 is one level of Y -> MSE 1
    assert psnr_y(ref + 1 / 219, ref, border=0) == pytest.approx(PSNR_OF_ONE_LEVEL)
    assert psnr_rgb(ref + 1 / 255, ref, border=0) == pytest.approx(PSNR_OF_ONE_LEVEL)
    assert psnr_rgb(ref + 2 / 255, ref, border=4) == pytest.approx(PSNR_OF_ONE_LEVEL - 20 * np.log10(2))
    grey = ref[..., 0]
    assert psnr_y(grey + 1 / 255, grey, border=2) == pytest.approx(PSNR_OF_ONE_LEVEL)
    assert psnr_y(ref, ref, border=0) == np.inf and psnr_rgb(ref, ref, border=0) == np.inf


def test_border_crop_crops_exactly_border_pixels():
    ref = _image()
    pred = ref.copy()
    pred[:4] += 0.1
    pred[:, -4:] -= 0.1
    assert psnr_y(pred, ref, border=4) == np.inf and psnr_rgb(pred, ref, border=4) == np.inf
    assert psnr_y(pred, ref, border=3) < 40
    assert ssim_y(pred, ref, border=4) == pytest.approx(1.0)
    assert ssim_y(pred, ref, border=3) < 1.0
    with pytest.raises(InputError, match="border"):
        psnr_y(pred, ref, border=20)  # 48 x 40: nothing left


def test_shape_mismatch_names_both_shapes():
    for fn in (psnr_y, psnr_rgb, ssim_y):
        with pytest.raises(InputError, match=r"\(48, 40, 3\) vs \(40, 48, 3\)"):
            fn(_image(), _image(40, 48), 0)
    with pytest.raises(InputError, match=r"\(8, 8\) vs \(8, 8, 1\)"):
        colour_bias(np.zeros((8, 8)), np.zeros((8, 8, 1)))


def test_ssim_is_one_for_identical_and_falls_with_noise():
    ref = _smooth()
    rng = np.random.default_rng(1)
    assert ssim_y(ref, ref, border=0) == pytest.approx(1.0, abs=1e-12)
    scores = [ssim_y(ref + rng.normal(0, s, ref.shape), ref, border=2) for s in (0.01, 0.03, 0.1)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


@pytest.mark.parametrize("border", [0, 3])
def test_ssim_matches_skimage_on_the_valid_region(border):
    # skimage filters with reflect padding and then drops (11 - 1) / 2 = 5 pixels per side before the mean:
    # what remains is exactly the 'valid' map, so both agree on the same cropped Y
    rng = np.random.default_rng(2)
    ref = _smooth(70, 60)
    pred = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1)
    y_pred, y_ref = rgb_to_y(pred), rgb_to_y(ref)
    if border:
        y_pred, y_ref = y_pred[border:-border, border:-border], y_ref[border:-border, border:-border]
    expected = structural_similarity(y_pred, y_ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255)
    assert ssim_y(pred, ref, border) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(InputError, match="11 x 11"):
        ssim_y(pred[:14], ref[:14], border=2)


def test_colour_bias_of_a_red_shift():
    ref = _image()
    pred = ref.copy()
    pred[..., 0] += 2 / 255
    np.testing.assert_allclose(colour_bias(pred, ref), [2 / 255, 0, 0], atol=1e-12)
    assert max_colour_bias(pred, ref) == pytest.approx(2 / 255)
    assert max_colour_bias(ref - 3 / 255, ref) == pytest.approx(3 / 255)  # absolute value
    assert colour_bias(ref[..., :1], ref[..., :1]).shape == (1,)


def test_evaluate_reports_the_field_numbers_with_border_scale():
    ref = _smooth()
    pred = ref.copy()
    pred[..., 0] += 2 / 255
    pred[:4] = np.clip(pred[:4] + 2 / 255, 0, 1)  # rows inside the x4 border: seen by the colour bias only
    out = evaluate(pred, ref, scale=4)
    assert set(out) == {"psnr_y", "ssim_y", "psnr_rgb", "colour_bias_255"}
    y_level = 65.481 * 2 / 255  # the red shift on Y's 0..255 scale
    assert out["psnr_y"] == pytest.approx(20 * np.log10(255 / y_level))
    assert out["psnr_rgb"] == pytest.approx(10 * np.log10(1 / ((2 / 255) ** 2 / 3)))
    assert out["ssim_y"] == pytest.approx(ssim_y(pred, ref, 4))
    assert out["colour_bias_255"] == pytest.approx(2 + 2 * 4 / 64)  # in 1/255 units, over the whole image


def _texture(n=192, seed=3):
    return np.random.default_rng(seed).uniform(0, 1, (n, n, 3))


def test_seam_ratio_is_one_on_texture_and_large_on_a_step_along_the_seams():
    img = _texture()
    seams = [64, 128]
    assert seam_energy_ratio(img, seams, seams) == pytest.approx(1.0, abs=0.1)
    assert seam_energy_ratio(img, seams, seams, width=3) == pytest.approx(1.0, abs=0.1)
    stepped = 0.2 + 0.05 * img  # a faint texture with steps of 0.2 where the tiles meet
    for s in seams:
        stepped[:, s:] += 0.2  # a step between columns s - 1 and s
        stepped[s:, :] += 0.2
    assert seam_energy_ratio(stepped, seams, seams) > 10
    assert seam_energy_ratio(stepped, [65, 129], [65, 129]) < 0.5  # one pixel off: the steps are interior now


def test_seam_ratio_compares_each_direction_with_its_own_interior():
    # strong vertical stripes (large gradients across columns), nearly flat down the rows
    x = np.arange(128)
    img = np.broadcast_to((0.5 + 0.4 * np.sin(x * 1.3))[None, :, None], (128, 128, 3)).copy()
    img += np.random.default_rng(4).normal(0, 0.01, img.shape)
    assert seam_energy_ratio(img, [], [32, 64, 96]) == pytest.approx(1.0, abs=0.25)
    assert seam_energy_ratio(img[..., 0], [], [32, 64, 96]) == pytest.approx(1.0, abs=0.25)  # grey


def test_seam_ratio_rejects_bad_seams():
    img = _texture(32)
    for bad in ([0], [32]):
        with pytest.raises(InputError, match=r"expected 1\.\.31"):
            seam_energy_ratio(img, bad, [])
    with pytest.raises(InputError, match="at least one seam"):
        seam_energy_ratio(img, [], [])
    with pytest.raises(InputError, match="width"):
        seam_energy_ratio(img, [16], [], width=0)


def test_ssim_of_a_large_image():
    ref = _texture(1024)
    pred = np.clip(ref + 0.01, 0, 1)
    assert 0.9 < ssim_y(pred, ref, border=4) < 1.0  # a large image in one go (no timing here: see the benchmark)


def test_seam_energy_with_a_period_compares_the_same_sub_pixel_phase():
    """An upscaled image's gradient energy varies with the phase modulo the scale: seams at multiples of 4 on an
    image whose phase-0 boundaries are strong read as seams without `period`, and as nothing with it."""
    rng = np.random.default_rng(0)
    y = np.kron(rng.random((32, 32)), np.ones((4, 4)))  # 4 x 4 blocks: steps at x = 4k only
    img = np.repeat(y[..., None], 3, axis=2) * 0.5 + 0.25
    cut = [32, 64, 96]
    assert seam_energy_ratio(img, cut, []) > 3
    assert seam_energy_ratio(img, cut, [], period=4) == pytest.approx(1.0, abs=0.3)
    seam, expected = seam_energy(img, cut, [], period=4)
    assert seam > 0 and expected > 0
    with pytest.raises(InputError, match="period"):
        seam_energy(img, cut, [], period=0)
