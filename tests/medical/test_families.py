"""The out-of-distribution families and the prior's broad training mix."""

import numpy as np
import pytest
import torch

from ditlab.core.errors import InputError
from ditlab.medical.families import (
    FAMILIES,
    SPLITS,
    TRAIN_FAMILIES,
    family_affine,
    make_volume,
    oblique_rotation,
    split_seeds,
)
from ditlab.medical.train import MIX_FROM, SliceData

SHAPE = (32, 32, 8)


@pytest.mark.parametrize("family", TRAIN_FAMILIES)
def test_every_family_is_seeded_in_the_hu_window_with_air_outside_the_circle(family):
    a, b, c = (make_volume(family, SHAPE, s) for s in (0, 0, 1))
    assert a.shape == SHAPE and a.dtype == np.float32
    assert np.allclose(a, b)  # same seed, same volume
    assert not np.allclose(a, c)  # another seed, another volume
    assert a.min() >= -1000 and a.max() <= 1000
    assert a[0, 0].max() == -1000  # a corner lies outside the inscribed circle: air
    assert (a > -900).mean() > 0.2  # and there is an object, not just air


def test_families_differ_from_each_other_and_from_the_torso():
    vols = {f: make_volume(f, SHAPE, 3) for f in FAMILIES}
    for f, g in [(f, g) for f in FAMILIES for g in FAMILIES if f < g]:
        assert np.abs(vols[f] - vols[g]).mean() > 20, (f, g)
    bone = {f: float((v > 700).mean()) for f, v in vols.items()}
    assert bone["head"] > 0.01  # the skull: a shell of bone


def test_ellipses_are_oblique_and_written_with_their_oblique_affine():
    rot = oblique_rotation(5)
    assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-5)
    assert abs(rot[2, 2]) < 0.9999  # tilted out of the axial plane
    affine = family_affine("ellipses", SHAPE, 5, spacing=(1.0, 1.0, 2.0))
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), (1.0, 1.0, 2.0))
    assert not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))  # not axis-aligned
    centre = affine @ np.array([*((np.array(SHAPE) - 1) / 2), 1.0])
    assert np.allclose(centre[:3], 0, atol=1e-6)
    assert np.allclose(family_affine("head", SHAPE, 5)[:3, :3], np.diag([1.0, 1.0, 2.0]))


def test_splits_do_not_overlap():
    seeds = {k: set(split_seeds(k, 100)) for k in SPLITS}  # 100 test seeds below the validation ones
    for a in seeds:
        for b in seeds:
            assert a == b or not seeds[a] & seeds[b], (a, b)


@pytest.mark.parametrize(("args", "message"), [(("bones", SHAPE, 0), "unknown family"),
                                               (("head", (4, 32, 8), 0), "every side >= 8"),
                                               (("head", (32, 32), 0), "3D shape")])
def test_bad_family_arguments(args, message):
    with pytest.raises(InputError, match=message):
        make_volume(*args)
    with pytest.raises(InputError, match="unknown split"):
        split_seeds("holdout", 3)


def test_training_mix_starts_at_its_step_and_is_a_function_of_the_step():
    data = SliceData(batch=12, full_shape=(64, 64, 16), quick_shape=(64, 64, 8), pool=2)
    before, after = data.kinds(MIX_FROM - 1), data.kinds(MIX_FROM)
    assert set(before) == {"full", "quick"}
    assert set(after) == {"full", "quick", *TRAIN_FAMILIES} and len(after) == 12
    x1 = data(MIX_FROM, torch.Generator().manual_seed(4))["x"]
    x2 = SliceData(batch=12, full_shape=(64, 64, 16), quick_shape=(64, 64, 8), pool=2)(
        MIX_FROM, torch.Generator().manual_seed(4))["x"]
    assert x1.shape == (12, 1, 64, 64)
    assert torch.allclose(x1, x2)
    assert x1.min() >= -1 and x1.max() <= 1
