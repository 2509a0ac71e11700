"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long-running test (notebooks, book build, browser); `make test-fast` skips them"
    )
