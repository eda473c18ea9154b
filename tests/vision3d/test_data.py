import numpy as np
import pytest

from ditlab.core.errors import InputError
from ditlab.vision3d.data import CLASSES, dataset, shape_points, split_seed


@pytest.mark.parametrize("name", CLASSES)
def test_shapes_are_seeded_canonical_and_varied(name):
    a, b, c = shape_points(name, 3, 512), shape_points(name, 3, 512), shape_points(name, 4, 512)
    assert a.shape == (512, 3) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.allclose(a, b)  # one seed, one shape
    extent = a.max(0) - a.min(0)
    assert abs(extent.max() - 1) < 0.05 and np.abs((a.max(0) + a.min(0)) / 2).max() < 0.05
    assert not np.allclose(a, c, atol=0.05)


def test_classes_differ_and_splits_are_disjoint():
    chair, plane = dataset("chair", "train", 2, n=256), dataset("airplane", "train", 2, n=256)
    assert chair.shape == (2, 256, 3)
    assert abs((chair.max(1) - chair.min(1))[:, 1].mean() - (plane.max(1) - plane.min(1))[:, 1].mean()) > 0.2
    seeds = {s: {split_seed(s, i) for i in range(100)} for s in ("train", "val", "test")}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["val"] & seeds["test"])


def test_bad_requests_are_refused():
    with pytest.raises(InputError, match="unknown shape class 'sofa'"):
        shape_points("sofa", 0)
    with pytest.raises(InputError, match="split"):
        split_seed("holdout", 0)
    with pytest.raises(InputError, match="point count"):
        shape_points("chair", 0, 0)
