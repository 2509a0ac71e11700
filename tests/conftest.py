"""Shared pytest configuration."""
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long-running test (notebooks, book build, browser); `make test-fast` skips them"
    )


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
