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
