"""Shared pytest configuration."""
import random
import zlib

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


def _test_seed(nodeid: str) -> int:
    return zlib.crc32(nodeid.encode())


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every test starts from generators seeded by its own id (random, torch, numpy), so a test
    that draws random inputs is reproducible; a failure reports the seed."""
    import torch

    seed = _test_seed(request.node.nodeid)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        np.random.seed(seed % 2**32)
    request.node.user_properties.append(("seed", seed))
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seed = dict(item.user_properties).get("seed", _test_seed(item.nodeid))
        report.sections.append(("random seed", f"generators seeded with {seed} (from the test id: "
                                               f"zlib.crc32(nodeid)); rerun the test alone to reproduce"))
