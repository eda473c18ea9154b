import os

import pytest
import torch

# Every test runs the network in fp32 eager unless it asks otherwise: "auto" would calibrate (and compile) each
# tiny model on first use. The auto path has its own tests (tests/core/test_auto.py).
os.environ.setdefault("DITLAB_PRECISION", "fp32")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
