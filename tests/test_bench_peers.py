"""The benchmarks' peers compute what their tables say: bench_maxvol's LAPACK rows (its "same rows as LU" column),
bench_gpu's extrapolation of a peer timed on part of the batches."""

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

scipy_linalg = pytest.importorskip("scipy.linalg")


def _bench(name):
    """Import benchmarks/<name>.py (scripts, not a package), leaving sys.path and sys.modules as they were."""
    import sys

    path = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, path)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(path)
        sys.modules.pop(name, None)
        sys.modules.pop("_timing", None)


@pytest.fixture(scope="module")
def bench():
    return _bench("bench_maxvol")


def _rows_by_swaps(ipiv, n, k):
    """The slow reference: LAPACK's interchanges applied one by one to 0..n-1."""
    perm = np.arange(n)
    for j, p in enumerate(ipiv[:k]):
        perm[j], perm[p] = perm[p], perm[j]
    return perm[:k]


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 6), n=st.integers(1, 12), r=st.integers(1, 6), levels=st.sampled_from([2, 3, 1000]),
       seed=st.integers(0, 2**32 - 1))
def test_ipiv_rows_equals_the_swaps_one_by_one(bench, B, n, r, levels, seed):
    """Vectorised over the stack, the rows equal LAPACK's interchanges applied per batch, ties (few levels) and
    singular blocks included, and the one-matrix getrf_rows (the tall row's peer) gives the same rows."""
    rng = np.random.default_rng(seed)
    V3 = rng.integers(0, levels, size=(B, n, r)).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LinAlgWarning on the singular blocks
        ipiv = np.stack([scipy_linalg.lu_factor(V, check_finite=False)[1] for V in V3])
        rows = bench.lu_rows_batched(V3)
    k = min(n, r)
    assert rows.shape == (B, k)
    for b in range(B):
        np.testing.assert_array_equal(rows[b], _rows_by_swaps(ipiv[b], n, k))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.testing.assert_array_equal(bench.getrf_rows(V3[b]), rows[b])
        assert np.unique(rows[b]).size == k


def test_getrf_rows_are_the_rows_of_the_l_u_factors(bench):
    """Rows in selection order: V[rows] equals the first rows of L U (P^T V = L U)."""
    V = np.random.default_rng(0).standard_normal((40, 8))
    lu, _ = scipy_linalg.lu_factor(V)
    L = np.tril(lu, -1) + np.eye(40, 8)
    U = np.triu(lu)[:8]
    np.testing.assert_allclose(V[bench.getrf_rows(V)], (L @ U)[:8], atol=1e-12)


def test_lu_fmas_is_getrfs_count(bench):
    """sum_j (n - j - 1)(r - j - 1); for a square n x n, sum_m m^2 = (n - 1) n (2n - 1) / 6."""
    for n in (1, 2, 7, 32):
        assert bench.lu_fmas(n, n, n) == (n - 1) * n * (2 * n - 1) // 6
    assert bench.lu_fmas(128, 32, 16) == sum((127 - j) * (31 - j) for j in range(16))


def test_bench_gpu_scaled_time_counts_a_fixed_cost_once():
    """A peer timed on m and m / 2 batches: with t(x) = a + b x the estimate for B is a + b B (the plain ratio
    t(m) B / m would count a B / m times); without a fixed cost both agree; no positive slope (noise): the ratio."""
    bench_gpu = _bench("bench_gpu")
    t = lambda x, a, b: a + b * x  # noqa: E731
    for a, b, m, B in ((2e-3, 1e-7, 10_000, 1_000_000), (0.0, 3e-6, 100, 100_000), (5e-4, 2e-5, 101, 10_000)):
        got = bench_gpu.scaled_time(t(m, a, b), t(m // 2, a, b), m, B)
        assert got == pytest.approx(t(B, a, b), rel=1e-9)
        if a > 0:
            assert got < t(m, a, b) * B / m
    assert bench_gpu.scaled_time(1.0, 1.2, 10, 100) == pytest.approx(10.0)  # the half took longer: noise
    assert bench_gpu.scaled_time(1.0, 0.4, 100, 1_000_000) == pytest.approx(10_000.0)  # a negative fixed cost
