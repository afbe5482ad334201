import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("default")

#: every backend that can run on a NumPy array on this machine
CPU_BACKENDS = ["numba", "array_api"]


@pytest.fixture
def rng():
    return np.random.default_rng(20251122)


def readonly(a):
    """A read-only copy: a test passing it proves the input is never written to."""
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def ill_conditioned(rng, n, r, decades=10):
    U, _ = np.linalg.qr(rng.standard_normal((n, r)))
    W, _ = np.linalg.qr(rng.standard_normal((r, r)))
    return (U * np.logspace(0, -decades, r)) @ W.T
