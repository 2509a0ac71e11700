"""Process pools of the resumable CLIs (:mod:`sapa.lab.sweep`, :mod:`sapa.lab.mechanism`)."""
from __future__ import annotations

import signal
from contextlib import contextmanager

__all__ = ["stop_pool", "sigterm_as_interrupt"]


def stop_pool(pool) -> None:
    """Stop a ``ProcessPoolExecutor`` now (Ctrl-C / SIGTERM): cancel the queued jobs and
    terminate the workers, whose runs resume from their last checkpoint when rerun."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()


@contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises KeyboardInterrupt, so a killed CLI records what it did."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
