"""Synthetic volumes: seeded, in HU, textured, with the sizes and conventions the issue names."""

import numpy as np
import pytest

from ditlab.medical.data import (
    SIZES,
    make_ood_volume,
    make_phantom,
    phantom_dataset,
    slices_for_training,
)
from ditlab.medical.operators import hu_to_unit, unit_to_hu


def test_phantom_is_seeded_hu_and_textured():
    a, b = make_phantom((48, 48, 16), seed=3), make_phantom((48, 48, 16), seed=3)
    assert a.dtype == np.float32 and a.shape == (48, 48, 16)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, make_phantom((48, 48, 16), seed=4))
    assert a.min() == -1000 and 500 < a.max() <= 1000  # air and bone
    # inside the inscribed circle of every slice: CT's field of view
    yy, xx = np.mgrid[:48, :48] - 23.5
    assert (a[(xx ** 2 + yy ** 2) > 24 ** 2] == -1000).all()
    # texture: a smooth field of a few % of the attenuation (HU + 1000), none in air
    flat = make_phantom((48, 48, 16), seed=3, texture=0.0)
    rel = (a + 1000) / np.maximum(flat + 1000, 1) - 1
    body = (flat > -1000) & (a < 1000)
    assert 0.01 < rel[body].std() < 0.05
    assert (a[flat == -1000] == -1000).all()
    inner = body[1:] & body[:-1]
    assert np.abs(np.diff(rel, axis=0))[inner].mean() < 0.5 * rel[body].std()  # white noise: 1.1 std
    assert SIZES == {"quick": (64, 64, 32), "full": (128, 128, 64)}


def test_ood_volume_and_dataset():
    ood = make_ood_volume((32, 32, 16), seed=0)
    assert ood.shape == (32, 32, 16) and ood.dtype == np.float32
    assert ood.min() >= -1000 and ood.max() <= 1000 and (ood > -500).any()
    vols = phantom_dataset(2, (24, 24, 8), seed=10)
    assert np.array_equal(vols[1], make_phantom((24, 24, 8), seed=11))
    with pytest.raises(ValueError, match="unknown size"):
        phantom_dataset(1, "huge")


def test_training_slices_are_axial_and_in_minus_one_one():
    s = slices_for_training(1, (32, 32, 8), seed=0)
    assert s.shape[1:] == (32, 32) and 0 < s.shape[0] <= 8
    assert s.min() >= -1 and s.max() <= 1 and s.min() == -1


def test_window_conversion_is_monais_scale_intensity_range():
    hu = np.array([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])
    assert np.allclose(hu_to_unit(hu), [0, 0, 0.5, 1, 1])
    assert np.allclose(unit_to_hu(hu_to_unit(hu[1:4])), hu[1:4])
