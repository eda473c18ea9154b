import os
import sys
from dataclasses import dataclass

import pytest
import torch

# Every test runs the network in fp32 eager unless it asks otherwise: "auto" would calibrate (and compile) each
# tiny model on first use. The auto path has its own tests (tests/core/test_auto.py).
os.environ.setdefault("DITLAB_PRECISION", "fp32")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def vertical_app(name: str):
    """The Typer app a vertical plugs into `ditlab` through the entry-point group `ditlab.commands`."""
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="ditlab.commands") if ep.name == name]
    return ep.load()


@pytest.fixture
def vertical_cli(monkeypatch, capsys):
    """vertical_cli(name) -> run(*args): `ditlab <name> ARGS` in-process through the root's `main` (its exit codes
    and its handling of errors), with only that vertical plugged in; run returns a `CliResult`."""
    import typer

    from ditlab.core import cli as core_cli

    def make(name: str):
        root = typer.Typer(name="ditlab", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
        root.callback()(core_cli._root)
        root.add_typer(vertical_app(name), name=name)
        monkeypatch.setattr(core_cli, "app", root)
        monkeypatch.setattr(core_cli, "_load_verticals", lambda: None)
        monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer installs its own

        def run(*args) -> CliResult:
            capsys.readouterr()
            monkeypatch.setattr(sys, "argv", ["ditlab", name, *map(str, args)])
            try:
                core_cli.main()
                code = 0
            except SystemExit as e:
                code = 0 if e.code is None else e.code
            out = capsys.readouterr()
            return CliResult(code, out.out, out.err)

        return run

    return make


@pytest.fixture
def one_thread():
    """Tiny models on one thread: a second thread only adds synchronisation, and stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_srdit(seed: int, **kw):
    import torch

    from ditlab.imaging.models import SRDiT

    torch.manual_seed(seed)
    model = SRDiT(hidden_size=32, depth=1, num_heads=2, stem_channels=8, tile=16, **kw)
    with torch.no_grad():  # an untrained network is bicubic (zero head): give it an output of its own
        for p in model.head[-1].parameters():
            p.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_nets(tmp_path_factory):
    """Weights folders of tiny imaging networks (tests/imaging, tests/e2e): "sr" (x4, tasks bicubic / real),
    "restore" (x1, 3 tasks), "edsr" (x4)."""
    import torch

    from ditlab.core.weights import save_model
    from ditlab.imaging.models import EDSR

    root = tmp_path_factory.mktemp("nets")
    save_model(_tiny_srdit(0, scale=4, num_tasks=2), root / "sr")
    save_model(_tiny_srdit(1, scale=1, num_tasks=3), root / "restore")
    torch.manual_seed(2)
    save_model(EDSR(scale=4, channels=8, blocks=1, num_tasks=2), root / "edsr")
    return {k: str(root / k) for k in ("sr", "restore", "edsr")}
