"""The vision3d networks: voxels <-> points, PointDiT / PointNetDiffusion / RangeDiT shapes and input checks, the
parameter-matched baseline and the azimuth-periodic positions."""

import numpy as np
import pytest
import torch

from ditlab.core.errors import InputError
from ditlab.vision3d.models import (
    PointNetDiffusion,
    devoxelise,
    grid_coords,
    matched_pointnet,
    n_params,
    periodic_table,
    voxelise,
)
from ditlab.vision3d.pipeline import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
R = 8


def cloud(b=2, n=300, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(b, n, 3)).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Voxels <-> points
# ----------------------------------------------------------------------------------------------

def test_grid_coords_fill_the_grid_and_ignore_where_and_how_big_the_cloud_is():
    x = cloud()
    g = grid_coords(x, R)
    assert g.shape == x.shape and g.dtype == torch.float32
    assert g.min() >= 0 and g.max() <= R - 1
    assert (g.amax(1) - g.amin(1)).min() > (R - 1) / 3  # spread over the grid, not squashed into a corner
    # centred on the mean and scaled by the largest distance: translating or scaling the cloud changes nothing
    assert torch.allclose(grid_coords(x + torch.tensor([5.0, -3.0, 100.0]), R), g, atol=1e-4)
    assert torch.allclose(grid_coords(x * 7.5, R), g, atol=1e-4)
    # the point farthest from the mean sits half a grid away from the centre
    far = (g - (R - 1) / 2).norm(dim=-1).amax(1)
    assert torch.allclose(far, torch.full_like(far, (R - 1) / 2), atol=1e-4)


def test_a_single_point_lands_in_the_middle():
    g = grid_coords(torch.ones(1, 1, 3), R)
    assert torch.allclose(g, torch.full((1, 1, 3), (R - 1) / 2))


def test_voxelise_averages_the_points_of_each_voxel_and_counts_them():
    coords = torch.tensor([[[0.0, 0.0, 0.0], [0.2, -0.1, 0.3], [7.0, 7.0, 7.0], [3.0, 4.0, 5.0]]])
    feats = torch.tensor([[[1.0, 10.0], [3.0, 20.0], [5.0, 0.0], [-2.0, 4.0]]])
    vox, counts = voxelise(feats, coords, R)
    assert vox.shape == (1, 2, R, R, R) and counts.shape == (1, 1, R, R, R)
    assert counts.sum() == 4 and counts[0, 0, 0, 0, 0] == 2 and counts[0, 0, 3, 4, 5] == 1
    assert torch.allclose(vox[0, :, 0, 0, 0], torch.tensor([2.0, 15.0]))  # the mean of the two points there
    assert torch.allclose(vox[0, :, 7, 7, 7], torch.tensor([5.0, 0.0]))
    assert torch.allclose(vox[0, :, 3, 4, 5], torch.tensor([-2.0, 4.0]))  # (z, y, x) order would miss it
    assert (vox[:, :, counts[0, 0] == 0] == 0).all()  # empty voxels are zero


def test_a_constant_field_voxelises_to_the_constant_in_every_occupied_voxel():
    x = cloud(b=2, n=500)
    coords = grid_coords(x, R)
    feats = torch.tensor([1.5, -2.0, 0.25]).expand(2, 500, 3).contiguous()
    vox, counts = voxelise(feats, coords, R)
    assert (counts > 0).sum() > 50  # the cloud is spread over many voxels
    for c, value in enumerate((1.5, -2.0, 0.25)):
        inside = vox[:, c][counts[:, 0] > 0]
        assert torch.allclose(inside, torch.full_like(inside, value))
    assert counts.sum(dim=(1, 2, 3, 4)).tolist() == [500, 500]


def test_voxelise_then_devoxelise_at_the_voxel_centres_gives_the_features_back():
    idx = torch.stack(torch.meshgrid(*[torch.arange(0, R, 3)] * 3, indexing="ij"), -1).reshape(1, -1, 3).float()
    feats = torch.randn(1, idx.shape[1], 4)
    vox, counts = voxelise(feats, idx, R)
    assert (counts.sum() == idx.shape[1]) and counts.max() == 1
    assert torch.allclose(devoxelise(vox, idx), feats, atol=1e-6)


def test_devoxelise_at_integer_coordinates_reads_the_voxels():
    vol = torch.randn(2, 3, R, R, R)
    idx = torch.from_numpy(np.random.default_rng(1).integers(0, R, (2, 40, 3))).float()
    got = devoxelise(vol, idx)
    i = idx.long()
    want = torch.stack([vol[b][:, i[b, :, 0], i[b, :, 1], i[b, :, 2]].T for b in range(2)])
    assert got.shape == (2, 40, 3) and torch.allclose(got, want, atol=1e-6)


def test_devoxelise_interpolates_a_linear_field_exactly_and_a_constant_one_everywhere():
    axes = torch.meshgrid(*[torch.arange(R).float()] * 3, indexing="ij")
    linear = (0.5 + 1.0 * axes[0] - 2.0 * axes[1] + 0.25 * axes[2])[None, None]  # different slope per axis
    coords = torch.rand(1, 200, 3) * (R - 1)
    coords[0, :3] = torch.tensor([[0.0, 0.0, 0.0], [R - 1.0] * 3, [0.0, R - 1.0, 3.5]])  # corners included
    want = 0.5 + coords[..., 0] - 2 * coords[..., 1] + 0.25 * coords[..., 2]
    assert torch.allclose(devoxelise(linear, coords)[..., 0], want, atol=1e-4)
    const = torch.full((1, 2, R, R, R), 3.25)
    assert torch.allclose(devoxelise(const, coords), torch.full((1, 200, 2), 3.25))


# ----------------------------------------------------------------------------------------------
# PointDiT and the PointNet baseline
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["shape", "shape-baseline"])
def test_fresh_point_networks_predict_zero_for_any_number_of_points(tiny_builders, kind):
    torch.manual_seed(0)
    model = tiny_builders[kind]().eval()
    for n in (1, 17, 256):
        with torch.no_grad():
            v = model(cloud(3, n), torch.tensor([0.0, 500.0, 999.0]), torch.tensor([0, 2, 5]))
        assert v.shape == (3, n, 3) and v.dtype == torch.float32
        assert v.abs().max() == 0  # zero-initialised output layers


@pytest.mark.parametrize("kind", ["shape", "shape-baseline"])
def test_trained_like_point_networks_are_per_point_conditional_and_order_free(tiny_vision3d, kind):
    model = load_model(tiny_vision3d[kind])
    x = cloud(2, 64)
    labels = torch.tensor([1, 1])
    with torch.no_grad():
        v = model(x, 300.0, labels)
        perm = torch.randperm(64)
        v_perm = model(x[:, perm], 300.0, labels)
        other_class = model(x, 300.0, torch.tensor([3, 3]))
        null = model(x, 300.0, torch.tensor([5, 5]))  # the null label of classifier-free guidance
        later = model(x, 800.0, labels)
    assert v.shape == (2, 64, 3) and v.abs().max() > 0
    assert torch.allclose(v_perm, v[:, perm], atol=1e-5)  # a set network: the order of the points is no input
    for changed in (other_class, null, later):
        assert not torch.allclose(changed, v, atol=1e-6)


@pytest.mark.parametrize("kind", ["shape", "shape-baseline"])
@pytest.mark.parametrize("shape", [(2, 10, 2), (10, 3), (2, 0, 3), (2, 5, 3, 1)])
def test_point_networks_refuse_inputs_that_are_not_point_clouds(tiny_builders, kind, shape):
    model = tiny_builders[kind]().eval()
    with pytest.raises(InputError, match="expected point clouds"):
        model(torch.zeros(shape), 0.0, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("kind", ["shape", "shape-baseline"])
def test_point_networks_refuse_labels_out_of_range(tiny_builders, kind):
    model = tiny_builders[kind]().eval()
    for labels in (torch.tensor([0, 6]), torch.tensor([-1, 0]), torch.tensor([0, 1, 2])):
        with pytest.raises(InputError, match="class"):
            model(cloud(2, 8), 0.0, labels)


def test_point_dit_needs_a_resolution_made_of_whole_patches(tiny_builders):
    with pytest.raises(InputError, match="not a multiple of patch_size"):
        tiny_builders["shape"](resolution=9, patch_size=2)


@pytest.mark.parametrize("target_of", ["shape-dit", "lidar-dit"])
def test_matched_pointnet_hits_the_parameter_budget(target_of):
    from ditlab.vision3d import train

    with torch.device("meta"):  # parameter counts only: no memory, no initialisation
        target = n_params(train.build(target_of))
        config = dict(train.SHAPE_CONFIG) if target_of == "shape-dit" else {"num_classes": 0}
        model = matched_pointnet(target, **config)
        w = model.config.width
        neighbours = [n_params(PointNetDiffusion(width=v, **config)) for v in (w - 8, w + 8)]
    assert isinstance(model, PointNetDiffusion) and w % 8 == 0
    assert abs(n_params(model) / target - 1) < 0.03
    assert all(abs(n_params(model) - target) <= abs(n - target) for n in neighbours)
    assert model.config.num_classes == config["num_classes"]


# ----------------------------------------------------------------------------------------------
# RangeDiT
# ----------------------------------------------------------------------------------------------

def images(b=2, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (b, 2, 16, 64)).astype(np.float32))


def test_a_fresh_range_dit_predicts_zero_velocity(tiny_builders):
    model = tiny_builders["lidar"]().eval()
    with torch.no_grad():
        v = model(images(), 500.0)
    assert v.shape == (2, 2, 16, 64) and v.abs().max() == 0


def test_range_dit_reads_the_known_pixels_only_where_the_mask_says_so(tiny_vision3d):
    model = load_model(tiny_vision3d["lidar"])
    x, known = images(), images(seed=1)
    mask = torch.zeros(2, 1, 16, 64)
    mask[:, :, ::4] = 1
    with torch.no_grad():
        uncond = model(x, 500.0)
        zeros = model(x, 500.0, torch.zeros_like(x), torch.zeros(2, 1, 16, 64))
        cond = model(x, 500.0, known, mask)
        other = known.clone()
        other[:, :, 1::4] = 5.0  # changed only where the mask says unknown
        cond_other = model(x, 500.0, other, mask)
    assert uncond.shape == (2, 2, 16, 64) and uncond.abs().max() > 0
    assert torch.allclose(uncond, zeros, atol=1e-6)  # no known part = all-zero mask
    assert not torch.allclose(cond, uncond, atol=1e-5)
    assert torch.allclose(cond_other, cond, atol=1e-6)


def test_a_new_pixel_head_leaves_a_trained_range_dit_unchanged(tiny_vision3d, tiny_builders):
    trained = load_model(tiny_vision3d["lidar"])
    headed = tiny_builders["lidar"](pixel_head=8).eval()
    missing, unexpected = headed.load_state_dict(trained.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("head.") for k in missing)
    x, known = images(), images(seed=1)
    mask = torch.zeros(2, 1, 16, 64)
    mask[:, :, ::4] = 1
    with torch.no_grad():
        assert torch.allclose(headed(x, 300.0, known, mask), trained(x, 300.0, known, mask), atol=1e-6)
        _waken_head(headed)
        assert not torch.allclose(headed(x, 300.0, known, mask), trained(x, 300.0, known, mask), atol=1e-4)


def _waken_head(model):
    with torch.no_grad():
        for p in model.head.parameters():
            if not p.any():
                p.normal_(0, 0.1)


def test_the_pixel_head_wraps_around_in_azimuth_and_reads_a_few_pixels_around(tiny_builders):
    torch.manual_seed(0)
    head = tiny_builders["lidar"](pixel_head=8).eval()
    _waken_head(head)
    inputs, t = torch.randn(1, 7, 16, 64), torch.tensor([300.0])
    with torch.no_grad():
        out = head.head(inputs, t)
        rolled = head.head(inputs.roll(5, dims=-1), t)
        assert torch.allclose(rolled, out.roll(5, dims=-1), atol=1e-5)  # column 0's neighbour is column 63
        poked = inputs.clone()
        poked[0, :, 8, 0] += 1.0
        diff = (head.head(poked, t) - out).abs()[0].amax(0)  # (16, 64)
    near = torch.zeros(16, 64, dtype=torch.bool)
    near[4:13, [*range(0, 5), *range(60, 64)]] = True  # 9 x 9 pixels around (8, 0), across the seam
    assert diff[~near].max() == 0 and diff[8, 63] > 0 and diff[8, 1] > 0


@pytest.mark.parametrize(("args", "message"), [
    (((2, 2, 16, 32),), "expected range images"),
    (((2, 5, 16, 64),), "expected range images"),
    (((2, 16, 64),), "expected range images"),
    (((2, 2, 16, 64), (2, 2, 16, 32), (2, 1, 16, 64)), "known must be"),
    (((2, 2, 16, 64), (2, 2, 16, 64), (2, 2, 16, 64)), "known must be"),
    (((2, 2, 16, 64), (2, 2, 16, 64), None), "known must be"),
])
def test_range_dit_refuses_bad_shapes_and_masks(tiny_builders, args, message):
    model = tiny_builders["lidar"]().eval()
    tensors = [None if a is None else torch.zeros(a) for a in args]
    with pytest.raises(InputError, match=message):
        model(tensors[0], 0.0, *tensors[1:])


def test_range_dit_needs_whole_patches(tiny_builders):
    with pytest.raises(InputError, match="not divisible into patches"):
        tiny_builders["lidar"](width=60)


def _column_distances(dim, grid):
    gh, gw = grid
    table = periodic_table(dim, grid).reshape(gh, gw, dim)
    assert torch.isfinite(table).all()
    row = table[gh // 2]
    d = (row - row.roll(-1, 0)).norm(dim=-1)  # column c to column c + 1, the last one to column 0
    cos = torch.nn.functional.cosine_similarity(row, row.roll(-1, 0), dim=-1)
    return table, d, cos


def test_periodic_positions_of_the_tiny_grid_wrap_around():
    table, d, cos = _column_distances(24, (4, 8))
    assert table.shape == (4, 8, 24)
    assert torch.allclose(d, d[0].expand_as(d), atol=1e-5) and torch.allclose(cos, cos[0].expand_as(cos), atol=1e-6)
    assert not torch.allclose(table[0], table[1])  # rows differ
    flat = table.reshape(-1, 24)
    gaps = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e3
    assert gaps.min() > 0.1  # every token has a position of its own


@pytest.mark.parametrize(("dim", "grid"), [(144, (16, 64)), (96, (4, 8))])
def test_periodic_positions_wrap_around_at_the_shipped_size(dim, grid):
    _, d, cos = _column_distances(dim, grid)
    assert torch.allclose(d[-1], d[0], atol=1e-4), (d[0].item(), d[-1].item())
    assert torch.allclose(cos[-1], cos[0], atol=1e-5)
