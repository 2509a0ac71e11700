"""stop_pool ends a process pool's workers at once (Ctrl-C / SIGTERM of the resumable CLIs)."""
import subprocess
import sys

from sapa.lab._parallel import stop_pool


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
    """SIGTERM inside the block becomes KeyboardInterrupt; the old handler comes back. Run in a
    child process (a SIGTERM sent to the test process itself would hit pytest)."""
    code = """
import os, signal, time
from sapa.lab._parallel import sigterm_as_interrupt
before = signal.getsignal(signal.SIGTERM)
try:
    with sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    print("no interrupt")
except KeyboardInterrupt:
    print("interrupted", signal.getsignal(signal.SIGTERM) == before)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "interrupted True"
