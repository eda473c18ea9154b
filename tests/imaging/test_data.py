import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ditlab.core.errors import InputError
from ditlab.imaging import data


def _grey(img: np.ndarray) -> np.ndarray:
    return img.mean(-1)


def _edge_fraction(img: np.ndarray, step: float = 0.04) -> float:
    g = _grey(img)
    d = np.maximum(np.abs(np.diff(g, axis=0))[:, :-1], np.abs(np.diff(g, axis=1))[:-1])
    return float((d > step).mean())


def _high_frequency_share(img: np.ndarray) -> float:
    """Share of the (non-DC) spectral energy above a quarter of the sampling rate."""
    g = _grey(img)
    power = np.abs(np.fft.fft2(g - g.mean())) ** 2
    f = np.hypot(np.fft.fftfreq(g.shape[0])[:, None], np.fft.fftfreq(g.shape[1])[None])
    return float(power[f > 0.25].sum() / power.sum())


# ---- procedural images --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", data.KINDS)
def test_kind_deterministic_in_range_with_content(kind):
    for seed in range(4):
        img = data.procedural_image(seed, (96, 128), kind)
        assert img.shape == (96, 128, 3) and img.dtype == np.float32
        assert img.min() >= 0 and img.max() <= 1
        assert img.std() > 0.03, f"{kind} seed {seed} is nearly flat"
        assert _edge_fraction(img) > 0.003, f"{kind} seed {seed} has no edges"
        assert np.array_equal(img, data.procedural_image(seed, (96, 128), kind))
    assert not np.array_equal(data.procedural_image(0, kind=kind), data.procedural_image(1, kind=kind))


def test_kind_none_draws_the_kind_from_the_seed():
    named = data.eval_images("val", 30, (64, 64))
    kinds = [name.split("-")[1] for name, _ in named]
    assert set(kinds) <= set(data.KINDS)
    assert max(set(kinds), key=kinds.count) == "composite"  # the photo-like kind is the most common
    for i, (name, img) in enumerate(named[:5]):
        seed = data.split_seed("val", i)
        assert np.array_equal(img, data.procedural_image(seed, (64, 64)))
        assert np.array_equal(img, data.procedural_image(seed, (64, 64), kind=name.split("-")[1]))


def test_edges_are_antialiased():
    # flat-colour shapes drawn without anti-aliasing would give at most one colour per shape (< 170)
    for seed in range(3):
        img = data.procedural_image(seed, (128, 128), "shapes")
        colours = np.unique((img * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
        assert len(colours) > 300


def test_text_has_high_frequency_content():
    text = [_high_frequency_share(data.procedural_image(s, (128, 128), "text")) for s in range(5)]
    smooth = [_high_frequency_share(data.procedural_image(s, (128, 128), "gradient")) for s in range(5)]
    assert min(text) > 0.005
    assert np.mean(text) > 3 * np.mean(smooth)


def test_small_and_bad_sizes():
    assert data.procedural_image(3, (16, 24), "composite").shape == (16, 24, 3)
    with pytest.raises(InputError, match="8 x 8"):
        data.procedural_image(0, (4, 64))
    with pytest.raises(InputError, match="composite"):
        data.procedural_image(0, kind="noise")
    with pytest.raises(InputError, match="seed"):
        data.procedural_image(-1)


# ---- photos, splits, evaluation sets ------------------------------------------------------------------------------

def test_photo():
    cam = data.photo("camera")
    assert cam.shape == (512, 512, 3) and cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1
    assert np.array_equal(cam[..., 0], cam[..., 2])  # grey replicated
    astro = data.photo("astronaut")
    assert astro.shape == (512, 512, 3) and not np.array_equal(astro[..., 0], astro[..., 1])
    astro[:] = 0  # a copy: the cache is untouched
    assert data.photo("astronaut").max() > 0
    with pytest.raises(InputError, match="chelsea"):
        data.photo("lena")
    assert not set(data.TRAIN_PHOTOS) & set(data.EVAL_PHOTOS)


def test_splits_are_disjoint():
    ranges = [range(data.split_seed(s, 0), data.split_seed(s, data.SPLIT_SIZE - 1) + 1) for s in data.SPLITS]
    for a in range(len(ranges)):
        for b in range(a + 1, len(ranges)):
            assert ranges[a].stop <= ranges[b].start or ranges[b].stop <= ranges[a].start
    train = [img for _, img in data.eval_images("train", 4, (64, 64))]
    for split in ("val", "test"):
        for _, img in data.eval_images(split, 4, (64, 64)):
            assert not any(np.array_equal(img, t) for t in train)
    with pytest.raises(InputError, match="train"):
        data.split_seed("dev", 0)
    with pytest.raises(InputError, match="index"):
        data.split_seed("train", data.SPLIT_SIZE)


def test_eval_images_names_and_determinism():
    a = data.eval_images("test", 3, (32, 48))
    assert [name.rsplit("-", 1)[1] for name, _ in a] == ["0000", "0001", "0002"]
    assert all(name.startswith("test-") and img.shape == (32, 48, 3) for name, img in a)
    b = data.eval_images("test", 3, (32, 48))
    assert all(na == nb and np.array_equal(ia, ib) for (na, ia), (nb, ib) in zip(a, b, strict=True))


def test_ood_images():
    full = data.ood_images()
    assert [name for name, _ in full] == list(data.EVAL_PHOTOS)
    for name, img in full:
        assert img.shape[0] % 4 == 0 and img.shape[1] % 4 == 0 and img.dtype == np.float32
        assert data.photo(name).shape[0] - img.shape[0] < 4 and data.photo(name).shape[1] - img.shape[1] < 4
    crops = data.ood_images((128, 96))
    assert all(img.shape == (128, 96, 3) for _, img in crops)
    chelsea = data.photo("chelsea")
    y0, x0 = (chelsea.shape[0] - 128) // 2, (chelsea.shape[1] - 96) // 2
    assert np.array_equal(crops[0][1], chelsea[y0:y0 + 128, x0:x0 + 96])  # centred
    with pytest.raises(InputError, match="divisible by 4"):
        data.ood_images((130, 96))


# ---- training batches ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale, degradation", [(4, "realesrgan"), (2, "bicubic"), (1, "denoise"), (1, "jpeg")])
def test_training_batch_shapes_range_determinism(scale, degradation):
    lr, hr = data.training_batch(7, 4, 64, scale, degradation)
    assert hr.shape == (4, 3, 64, 64) and lr.shape == (4, 3, 64 // scale, 64 // scale)
    assert lr.dtype == hr.dtype == torch.float32
    assert 0 <= hr.min() and hr.max() <= 1 and 0 <= lr.min() and lr.max() <= 1
    assert torch.allclose(lr * 255, (lr * 255).round(), atol=1e-4)  # 8-bit inputs
    lr2, hr2 = data.training_batch(7, 4, 64, scale, degradation)
    assert torch.allclose(lr, lr2, atol=1e-6) and torch.allclose(hr, hr2, atol=1e-6)
    lr3, hr3 = data.training_batch(8, 4, 64, scale, degradation)
    assert not torch.equal(hr, hr3) and not torch.equal(lr, lr3)


def test_training_batch_sources():
    _, hr = data.training_batch(3, 4, 64, 2, "bicubic", photo_prob=0.0)
    for b in range(4):  # procedural images of train seeds derived from the batch seed
        expected = data.procedural_image(data.split_seed("train", 3 * 4 + b), (64, 64))
        assert np.array_equal(hr[b].permute(1, 2, 0).numpy(), expected)
    _, hr = data.training_batch(3, 8, 64, 2, "bicubic", photo_prob=1.0)
    grey = [bool(torch.equal(h[0], h[1]) and torch.equal(h[1], h[2])) for h in hr]
    assert any(grey) and not all(grey)  # crops of both camera (grey) and astronaut (colour)
    assert len({h.sum().item() for h in hr}) == 8  # random crops, not one image


def test_training_batch_bad_arguments():
    with pytest.raises(InputError, match="divisible"):
        data.training_batch(0, 2, 66, 4, "realesrgan")
    with pytest.raises(InputError, match="scale 1"):
        data.training_batch(0, 2, 64, 4, "denoise")
    with pytest.raises(InputError, match="realesrgan"):
        data.training_batch(0, 2, 64, 4, "nearest")
    with pytest.raises(InputError, match="photo_prob"):
        data.training_batch(0, 2, 64, 4, "bicubic", photo_prob=1.5)



def test_same_images_in_a_fresh_process():
    code = ("import hashlib; from ditlab.imaging import data; print(hashlib.sha256(b''.join("
            "data.procedural_image(s, (64, 64)).tobytes() for s in range(6))).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    here = hashlib.sha256(b"".join(data.procedural_image(s, (64, 64)).tobytes() for s in range(6))).hexdigest()
    assert there.strip() == here
