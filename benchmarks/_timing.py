"""Best-of-N wall-clock timing shared by the benchmark scripts (numbers only, no assertions)."""

import gc
import time

__all__ = ["best_of", "fmt_time"]


def best_of(fn, *, min_repeats=3, max_repeats=200, budget_s=1.0):
    """Warm ``fn`` up once, then time it with ``time.perf_counter``; return ``(best seconds, result)``.

    The number of timed calls adapts to the call's cost: at least ``min_repeats``,
    then more until ``budget_s`` seconds of timed calls have passed (or
    ``max_repeats``), so fast calls get many repeats and slow ones three. The best
    (minimum) time is the least disturbed by other work on the machine. The
    garbage collector is paused while timing.
    """
    result = fn()  # warm-up: Numba compilation, caches, page faults
    times = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        while len(times) < min_repeats or (len(times) < max_repeats and sum(times) < budget_s):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return min(times), result


def fmt_time(seconds):
    """A duration with a readable unit: ``'812 us'``, ``'3.41 ms'``, ``'1.27 s'``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"
