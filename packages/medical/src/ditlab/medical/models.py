"""The slice prior: a 2D DiT over axial CT slices, and the denoiser the solvers call.

The prior is trained on 64 x 64 crops of 128 x 128 phantom slices (and on whole 64 x 64 slices of the
quick-size phantoms) with axial RoPE and window attention in every block: a window of 16 x 16 tokens
(64 x 64 pixels) is exactly a training crop, so a slice of any size that is a multiple of 64 pixels is
handled at the context the model was trained on. Window borders are hidden by rolling the slice by a
random offset at every call (`SlicePrior.x0`), and other sizes are padded with air.

Units: the network sees slices in [-1, 1] (`2 * hu_to_unit(hu) - 1`); the solvers work in window units
[0, 1] (the operators' units), and `SlicePrior` converts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from ditlab.core import hooks
from ditlab.core.diffusion import FlowMatching
from ditlab.core.errors import InputError
from ditlab.core.models import DiT

PRIOR_NAME = "ct-prior"
CACHE_POLICIES = ("taylorseer", "fora", "first-block", "delta-dit")
"""Core's named cache policies (`ditlab.core.accel.policy`) this prior takes, the tuned one first: region-adaptive
sampling needs global attention, and the prior's window attention refuses it."""
TILE = 64  # pixels per window side: patch 4 x window 16
PATH = FlowMatching(t_sampling="logit_normal", logit_mean=-0.4, logit_std=1.2)
"""x_t = (1 - t) x0 + t eps, velocity target; t weighted towards the low-noise half the solvers use most."""


def prior_model(hidden: int = 192, depth: int = 6, heads: int = 3) -> DiT:
    """The prior's architecture (4.1M parameters at the default size)."""
    return DiT(token_kind="2d", in_channels=1, input_size=[TILE, TILE], patch_size=4, hidden_size=hidden,
               depth=depth, num_heads=heads, pos_embed="rope", window_size=TILE // 4,
               window_blocks=list(range(depth)))


def prior_identity(weights: str | Path | None = None) -> tuple[str, str]:
    """(name, sha256 of the weights file) of the packaged prior or of a weights folder: what an adapter is for."""
    from ditlab.core.weights import resolve, sha256_file, weights_file

    folder, digest = resolve(weights or PRIOR_NAME, package="ditlab.medical")
    name = PRIOR_NAME if weights is None or str(weights) == PRIOR_NAME else str(folder)
    return name, digest or sha256_file(weights_file(folder))


def check_adapter(adapter: str | Path, weights: str | Path | None = None) -> dict:
    """An adapter file's metadata, refused (naming both priors) unless it was made for the prior `weights` loads."""
    from ditlab.core.training.peft import check_adapter as check

    name, digest = prior_identity(weights)
    return check(adapter, expect_digest=digest, expect_name=name)


def load_prior(weights: str | Path | None = None, device: str | torch.device = "cpu",
               adapter: str | Path | None = None) -> DiT:
    """The packaged CT slice prior (sha256-verified), or a weights folder (`config.json` + safetensors), with a
    fine-tuning adapter (`ditlab medical finetune`) applied when given: one made for another prior is refused."""
    from ditlab.core.training.peft import load_adapter, merge_adapter
    from ditlab.core.weights import load_model

    model = load_model(DiT, weights or PRIOR_NAME, package="ditlab.medical", device=device)
    if adapter is not None:  # merged: the adapted prior runs as fast as the base, and feature caches see a plain DiT
        name, digest = prior_identity(weights)
        model = merge_adapter(load_adapter(model.float(), adapter, expect_digest=digest, expect_name=name))
    return model.float().eval()


PRIOR_MIN_SNR_DB = 40.0
"""The auto path's error bound for the prior (per-call SNR against fp32, dB): looser than core's sampling bound,
since every DDS step pulls the estimate back to the measurements. bf16 (per-call SNR 41-46 dB) moved DDS on the
quick benchmark's test phantom by 0.001 dB (`ditlab medical benchmark --quick --only precision`)."""


class SlicePrior:
    """Clean-slice estimates x0_hat(x_t, t) from a trained prior, in window units [0, 1].

    `x0(x_t, t)` takes noisy slices (B, H, W) on the flow path of the [-1, 1] data (x_t = (1-t) x + t eps),
    pads them with air to a multiple of 64 pixels, rolls them by a random multiple of the patch size (so
    window borders move between calls), runs the network in chunks of `batch` slices, and returns Tweedie's
    estimate in [0, 1]. `calls` counts network evaluations per slice (NFE).

    Feature caches (`cached`): each chunk of slices is its own stream of calls, so it runs in its own hook
    context ("chunk-0", "chunk-1", ...) and keeps its own cached features; and the window roll is drawn once
    per solver run instead of once per call, since a cache adds features of an earlier call to the current
    one and a roll would move the slices under them. `precision` (`ditlab.core.accel.auto`; None: "auto") is
    how the network computes: "auto" runs the mode calibrated fastest for this prior on this machine, on its own
    chunk of `batch` 64 x 64 slices, within the auto error bound (measured once per machine, then read from the
    cache; calls that need gradients through the network, DPS, get the fastest of fp32 and bf16); or name a mode
    ("fp32", "bf16", "int8+compile", ...; one the hardware lacks raises, naming why). `mode` says which runs.
    """

    def __init__(self, model: DiT, batch: int = 16, generator: torch.Generator | None = None,
                 shift_windows: bool = True, precision: str | None = None) -> None:
        from ditlab.core.accel.auto import check_precision, default_precision

        if batch < 1:
            raise InputError(f"batch must be >= 1, got {batch}")
        self.precision = check_precision(precision or default_precision())
        self.model, self.batch, self.shift_windows = model, int(batch), shift_windows
        self.generator = generator or torch.Generator().manual_seed(0)
        self.patch = int(model.dit_config.patch[0])
        self.calls = 0
        self._roll: tuple[int, int] | None = None  # fixed while a cache is attached (`cached`)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepared(self, grad: bool = False):
        """The network this prior calls and its context (`ditlab.core.accel.auto.Prepared`), chosen on first use."""
        from ditlab.core.accel.auto import Probe, prepare

        def probe() -> Probe:
            x = torch.randn((self.batch, 1, TILE, TILE), generator=torch.Generator().manual_seed(0))
            return Probe(x.to(self.device), time_scale=float(PATH.model_time(torch.tensor(1.0))))

        return prepare(self.model, self.precision, probe, need_grad=grad, min_snr_db=PRIOR_MIN_SNR_DB)

    @property
    def mode(self) -> str:
        """The precision mode the network runs in (the auto choice, or the one asked for)."""
        return self.prepared().mode

    def velocity(self, x_t: torch.Tensor, t: float, grad: bool = False) -> torch.Tensor:
        """The network's velocity for slices (B, H, W) on the [-1, 1] path at time t in [0, 1] (with autograd
        through the network when `grad`)."""
        run = self.prepared(grad)
        with torch.set_grad_enabled(grad), run.context():
            return self._velocity(run.net, x_t, t)

    def _velocity(self, net: torch.nn.Module, x_t: torch.Tensor, t: float) -> torch.Tensor:
        b, h, w = x_t.shape
        ph, pw = (-h) % TILE, (-w) % TILE
        x = x_t[:, None]
        if ph or pw:  # pad with air on the path: -(1 - t) + t * eps
            x = -(1 - t) + t * torch.randn((b, 1, h + ph, w + pw), generator=self.generator)
            x[:, :, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w] = x_t[:, None]
        if self.shift_windows:
            dy, dx = self._roll or self._draw_roll()
            x = torch.roll(x, (dy, dx), dims=(2, 3))
        tt = PATH.model_time(torch.tensor([float(t)]))
        out = []
        for k, c in enumerate(x.split(self.batch)):
            with hooks.context(net, f"chunk-{k}"):  # one cache context per chunk (inert without a cache)
                out.append(net(c.to(self.device), tt.expand(len(c)).to(self.device)).float().cpu())
        out = torch.cat(out)
        if self.shift_windows:
            out = torch.roll(out, (-dy, -dx), dims=(2, 3))
        self.calls += 1
        return out[:, 0, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]

    def _draw_roll(self) -> tuple[int, int]:
        """A random window offset (rows, columns), a multiple of the patch size."""
        dy, dx = (int(v) * self.patch for v in torch.randint(0, TILE // self.patch, (2,), generator=self.generator))
        return dy, dx

    @contextlib.contextmanager
    def cached(self, cache, calls: int) -> Iterator[None]:
        """Attach a `ditlab.core.accel` cache policy for one solver run of `calls` network evaluations (per chunk
        of slices, each chunk in its own context), with one window roll for the whole run."""
        with cache.attach(self.prepared().net, calls):
            self._roll = self._draw_roll() if self.shift_windows else None
            try:
                yield
            finally:
                self._roll = None

    @torch.no_grad()
    def x0(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """Tweedie's clean estimate in window units [0, 1] for slices x_t (B, H, W) on the [-1, 1] path."""
        return (PATH.x0_from_output(x_t, t, self.velocity(x_t, t)) + 1) / 2

    @staticmethod
    def to_path(x_unit: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
        """Put clean slices in [0, 1] on the path at time t with the given noise: (1 - t)(2x - 1) + t eps."""
        return PATH.interpolate(2 * x_unit - 1, noise, t)


def random_crop(vol, generator: torch.Generator) -> torch.Tensor:
    """A training window (TILE x TILE) of a random slice of `vol` ((N, H, W) in [-1, 1], sides >= TILE), mirrored
    left-right half the time (X is left-right in RAS: a mirrored patient)."""
    sl = vol[int(torch.randint(len(vol), (1,), generator=generator))]
    oy, ox = (int(torch.randint(sl.shape[a] - TILE + 1, (1,), generator=generator)) for a in (0, 1))
    crop = torch.from_numpy(sl[oy:oy + TILE, ox:ox + TILE].copy())
    return crop.flip(0) if torch.rand((), generator=generator) < 0.5 else crop


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
