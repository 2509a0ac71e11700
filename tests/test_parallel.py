"""stop_pool ends a process pool's workers at once (Ctrl-C / SIGTERM of the resumable CLIs)."""
import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from sapa._parallel import sigterm_as_interrupt, stop_pool


def test_stop_pool_terminates_running_workers():
    pool = ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn"))
    for _ in range(4):
        pool.submit(time.sleep, 60)
    deadline = time.time() + 60
    while len(getattr(pool, "_processes", {}) or {}) < 2 and time.time() < deadline:
        time.sleep(0.1)
    procs = list(pool._processes.values())
    assert procs
    t0 = time.time()
    stop_pool(pool)
    for p in procs:
        p.join(timeout=20)
        assert not p.is_alive()
    assert time.time() - t0 < 20  # not the 60 s of the jobs


def test_sigterm_as_interrupt_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before
