"""stop_pool ends a process pool's workers at once (Ctrl-C / SIGTERM of the resumable CLIs)."""
import os
import signal
import time

import pytest

from sapa.lab._parallel import sigterm_as_interrupt, stop_pool


def test_stop_pool_cancels_and_terminates_every_worker():
    """stop_pool cancels what is queued, does not wait, and terminates each worker (the sweeps'
    Ctrl-C path, also checked by hand with real runs: workers gone within a second)."""
    calls = []

    class Proc:
        def __init__(self, pid):
            self.pid = pid

        def terminate(self):
            calls.append(("terminate", self.pid))

    class Pool:
        _processes = {1: Proc(1), 2: Proc(2)}

        def shutdown(self, wait=True, cancel_futures=False):
            calls.append(("shutdown", wait, cancel_futures))

    stop_pool(Pool())
    assert calls == [("shutdown", False, True), ("terminate", 1), ("terminate", 2)]
    Pool._processes = None  # a pool that never started a worker
    calls.clear()
    stop_pool(Pool())
    assert calls == [("shutdown", False, True)]


def test_sigterm_as_interrupt_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before
