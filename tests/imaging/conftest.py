import pytest


@pytest.fixture(autouse=True)
def _one_thread_everywhere(one_thread):
    """Many small ops: one thread is faster than two, and far faster on a busy machine."""
    yield

