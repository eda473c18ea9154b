import numpy as np
import pytest
import torch

from ditlab.core.errors import InputError
from ditlab.imaging.metrics import seam_energy_ratio
from ditlab.imaging.models import SRDiT, upsample
from ditlab.imaging.superres import (
    ResidualShift,
    Wavefront,
    _band_noise,
    blend_window,
    colour_fix,
    from_model,
    sample,
    seams,
    sr_loss,
    tile_starts,
    to_model,
    upsample_rows,
)


def tiny(scale=4, **kw):
    torch.manual_seed(0)
    m = SRDiT(scale=scale, hidden_size=32, depth=1, num_heads=2, stem_channels=8, tile=16, **kw)
    with torch.no_grad():
        for p in m.parameters():  # random everywhere: an output that differs from tile to tile
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def test_schedule_rises_from_nearly_clean_to_noise():
    path = ResidualShift()
    eta = path.etas()
    assert eta[0] == 0 and torch.all(eta[1:] > eta[:-1])
    assert eta[1] <= 0.001 + 1e-12 and abs(float(eta[-1]) - 0.999) < 1e-9
    assert path.schedule() == [4, 3, 2, 1] and path.schedule(1) == [4] and path.schedule(2) == [4, 1]
    with pytest.raises(InputError, match=r"\[1, 4\]"):
        path.schedule(5)


def test_q_sample_and_posterior_step_are_consistent():
    path = ResidualShift(kappa=0.5)
    x0, y0 = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    xt = path.q_sample(x0, y0, torch.tensor([4]), torch.zeros(1, 3, 8, 8))
    assert torch.allclose(xt, torch.full_like(xt, 0.999))  # x_T's mean is y0 (eta_T of the way)
    # with the true x0 and no noise, a step moves the mean to the marginal mean at s
    xs = path.step(xt, x0, 4, 2, None)
    assert torch.allclose(xs, torch.full_like(xs, float(path.etas()[2])), atol=1e-6)
    assert torch.equal(path.step(xt, x0, 1, 0, None), x0)


def test_network_starts_as_bicubic_and_checks_shapes():
    torch.manual_seed(0)
    m = SRDiT(scale=4, hidden_size=32, depth=1, num_heads=2, stem_channels=8, tile=16).eval()
    lr = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64), 500.0, lr)
    assert torch.allclose(out, upsample(lr, 4), atol=1e-6)
    with pytest.raises(InputError, match="HR state"):
        m(torch.randn(2, 3, 60, 64), 500.0, lr)
    with pytest.raises(InputError, match="multiple of the patch"):
        m(torch.randn(1, 3, 60, 60), 500.0, torch.rand(1, 3, 15, 15))


def test_lr_features_reused_give_the_same_output():
    m = tiny()
    lr, x = torch.rand(2, 3, 16, 16), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = m(x, 250.0, lr)
        b = m(x, 250.0, lr, lr_features=m.encode_lr(lr))
    assert torch.allclose(a, b, atol=1e-5)


def test_loss_trains_the_network():
    m = tiny(num_tasks=2).train()
    batch = {"lr": torch.rand(4, 3, 16, 16), "hr": torch.rand(4, 3, 64, 64), "task": torch.tensor([0, 1, 0, 1])}
    batch["lr"] = torch.nn.functional.avg_pool2d(batch["hr"], 4)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    first = [sr_loss(m, batch, torch.Generator().manual_seed(0)).item()]
    for _ in range(30):
        loss = sr_loss(m, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sr_loss(m, batch, torch.Generator().manual_seed(0)).item() < first[0]


def test_tile_starts_cover_the_image():
    for length in (16, 20, 47, 100):
        starts = tile_starts(length, 16, 4)
        covered = np.zeros(max(length, 16), bool)
        for s in starts:
            covered[s:s + 16] = True
        assert covered[:length].all() and starts[-1] + 16 == max(length, 16)
        assert all(b - a <= 12 for a, b in zip(starts, starts[1:], strict=False))
    with pytest.raises(InputError, match="overlap"):
        tile_starts(40, 16, 16)


def test_sample_any_size_and_aspect():
    m = tiny()
    for h, w in ((10, 7), (16, 40), (33, 21)):
        out = sample(m, torch.rand(1, 3, h, w), tile=16, overlap=4)
        assert out.shape == (1, 3, 4 * h, 4 * w) and out.min() >= 0 and out.max() <= 1


def test_tiles_blended_every_step_leave_no_seams():
    """A network whose output differs from tile to tile: blended at every step, the seams' gradient energy matches
    the interior's; tiles stitched without overlap show seams."""
    m = tiny()
    g = torch.Generator().manual_seed(0)
    lr = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 96, 96, generator=g), 2)  # 48 x 48, some texture
    blended = sample(m, lr, tile=16, overlap=8)
    stitched = sample(m, lr, tile=16, overlap=0)
    img_b, img_s = (x[0].permute(1, 2, 0).numpy() for x in (blended, stitched))
    cut_b, cut_s = seams(48, 16, 8, 4), seams(48, 16, 0, 4)
    ratio_b = seam_energy_ratio(img_b, cut_b, cut_b)
    ratio_s = seam_energy_ratio(img_s, cut_s, cut_s)
    assert abs(ratio_b - 1) < 0.15, ratio_b
    assert ratio_s > ratio_b + 0.15, (ratio_s, ratio_b)


def test_lr_cache_does_not_change_the_result():
    m = tiny()
    lr = torch.rand(1, 3, 40, 24)
    a = sample(m, lr, tile=16, overlap=4, generator=torch.Generator().manual_seed(3))
    b = sample(m, lr, tile=16, overlap=4, generator=torch.Generator().manual_seed(3), cache_mb=0)
    assert torch.allclose(a, b, atol=1e-5)


def test_one_step_is_the_x0_estimate():
    m = tiny()
    lr = torch.rand(1, 3, 16, 16)
    out = sample(m, lr, steps=1, tile=16)
    assert out.shape == (1, 3, 64, 64)
    assert not torch.allclose(out, sample(m, lr, steps=4, tile=16))


def test_colour_fix_removes_a_colour_shift_and_keeps_detail():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 64, 64, generator=g) * 0.5 + 0.25
    detail = torch.randn(1, 3, 64, 64, generator=g) * 0.05
    out = (ref + detail + torch.tensor([0.05, -0.03, 0.0]).view(1, 3, 1, 1)).clamp(0, 1)
    for method in ("wavelet", "adain"):
        fixed = colour_fix(out, ref, method)
        bias = (fixed - ref).mean((0, 2, 3)).abs().max()
        assert bias < 0.005, (method, bias)
    fixed = colour_fix(out, ref, "wavelet")
    hp = lambda x: x - torch.nn.functional.avg_pool2d(x, 5, 1, 2, count_include_pad=False)  # noqa: E731
    assert torch.corrcoef(torch.stack([hp(fixed).flatten(), hp(out).flatten()]))[0, 1] > 0.9
    with pytest.raises(InputError, match="colour fix"):
        colour_fix(out, ref, "magic")


def _whole_image_sampler(m, lr, tile, overlap, steps, seed):
    """The plain algorithm the wavefront reorders: the whole state, every tile blended, then the posterior draw."""
    path, s_ = ResidualShift.of(m), m.scale
    base = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed)))
    h, w = lr.shape[2:]
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    bands = list(zip(rows, [*rows[1:], h], strict=True))
    x_lr = to_model(lr)
    y0 = upsample(x_lr, s_)
    win = blend_window(tile * s_)
    win2 = win[:, None] * win[None, :]
    std = path.kappa * float(path.etas()[-1]) ** 0.5

    def noise(i):
        return torch.cat([_band_noise((1, 3, (b - a) * s_, w * s_), base, i, k) for k, (a, b) in enumerate(bands)], 2)

    x = y0 + std * noise(0)
    ts = path.schedule(steps)
    for i, t in enumerate(ts):
        acc, wsum = torch.zeros_like(x), torch.zeros_like(x)
        for y in rows:
            for c in cols:
                sl = (..., slice(y * s_, (y + tile) * s_), slice(c * s_, (c + tile) * s_))
                pred = m(x[sl], path.timestep(torch.tensor([t])), x_lr[..., y:y + tile, c:c + tile])
                acc[sl] += pred * win2
                wsum[sl] += win2
        nxt = ts[i + 1] if i + 1 < len(ts) else 0
        x = path.step(x, acc / wsum, t, nxt, noise(i + 1) if nxt else None)
    return from_model(x)


@pytest.mark.parametrize("steps,overlap,batch,scale", [(4, 4, 16, 4), (2, 8, 4, 4), (1, 4, 2, 4), (4, 4, 8, 1)])
def test_wavefront_equals_the_whole_image_sampler(steps, overlap, batch, scale):
    m = tiny(scale)
    lr = torch.rand(1, 3, 64, 40, generator=torch.Generator().manual_seed(1))
    keep = lr.clone()
    ref = _whole_image_sampler(m, lr, 16, overlap, steps, 5)
    got = sample(m, lr, steps=steps, tile=16, overlap=overlap, batch=batch, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    rows = []
    none = sample(m, lr, steps=steps, tile=16, overlap=overlap, batch=batch,
                  generator=torch.Generator().manual_seed(5), sink=lambda r, x: rows.append((r, x)))
    assert none is None and [r for r, _ in rows] == sorted(r for r, _ in rows) and rows[0][0] == 0
    assert torch.allclose(torch.cat([x for _, x in rows], 2), ref, atol=1e-5)
    assert torch.equal(lr, keep)  # the input is not written to (at x1 the start state is the input itself)


def test_wavefront_reads_only_finished_bands_and_keeps_few_alive():
    """Simulated on 40 tile rows: a unit runs only after the units it reads from; the bands alive at once (state
    and accumulators of every step) do not grow with the image's height."""
    for tile, overlap, steps, group in ((32, 4, 4, 1), (16, 8, 2, 1), (16, 12, 3, 2), (32, 4, 1, 4)):
        alive_max = {}
        for height in (400, 1200):
            rows = tile_starts(height, tile, overlap)
            f = Wavefront(rows, height, tile, steps, group)
            done: set[tuple[int, int]] = set()
            alive, most = set(), 0
            for k in range(f.rounds):
                units = f.units(k)
                for i, j in units:
                    assert (i, j - 1) in done or j == 0
                    if i:
                        assert all((i - 1, b // group) in done for b in f.reads(j)), (k, i, j)
                    alive |= {(i, b) for b in f.reads(j)}
                done |= set(units)
                most = max(most, len(alive))
                for i, j in units:
                    alive -= {(i, b) for b in range(j * group, (j + 1) * group)}
            assert len(done) == steps * f.groups
            alive_max[height] = most
        assert alive_max[1200] == alive_max[400], alive_max


def test_upsample_rows_equal_the_whole_upsampling():
    lr = torch.rand(1, 3, 23, 9)
    full = upsample(lr, 4)
    for r0, r1 in ((0, 5), (7, 40), (50, 92), (0, 92)):
        assert torch.allclose(upsample_rows(lr, 4, r0, r1), full[:, :, r0:r1], atol=1e-6)
