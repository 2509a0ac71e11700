"""Peak memory of a call on the CPU, from the profiler's memory events (used by the benchmarks)."""
from __future__ import annotations

__all__ = ["allocator_peak"]


def allocator_peak(fn) -> int:
    """Peak bytes of torch's CPU allocator during ``fn()`` above what was allocated before it,
    from the profiler's memory events (every allocation, kernels' scratch included; exact and
    repeatable, unlike the resident set on a busy machine)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak
