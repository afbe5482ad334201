"""The batch-interleaved DEIM kernel (graft_array._numba.compact) equals _deim_batched and LAPACK getrf."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from graft_array import testing as gt
from graft_array._numba.compact import _deim_compact
from graft_array._numba.deim import _deim_batched


def _both(V, kk, nthreads=2):
    eps = float(np.finfo(V.dtype).eps)
    got = _deim_compact(V, kk, eps, nthreads)
    ref = _deim_batched(V, kk, eps, nthreads)
    for g, r in zip(got, ref):
        assert_array_equal(g, r)
    return got


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(40, 128, 32), (13, 64, 16), (9, 37, 11), (5, 256, 64), (3, 8, 8), (1, 1, 1)])
def test_compact_equals_batched_and_lapack(rng, dtype, shape):
    V = rng.standard_normal(shape).astype(dtype)
    piv, rank, bad = _both(V, shape[2])
    assert not bad.any()
    assert (rank == shape[2]).all()
    for b in range(shape[0]):
        assert_array_equal(piv[b], gt.lu_pivots(V[b]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compact_kk_below_r(rng, dtype):
    V = rng.standard_normal((11, 50, 20)).astype(dtype)
    V[3, 7, 19] = 1e3  # max |V_b| outside the first kk columns: sets the tolerance
    for kk in (1, 7, 8, 9, 13):
        piv = _both(V, kk)[0]
        for b in range(V.shape[0]):
            assert_array_equal(piv[b], gt.lu_pivots(V[b, :, :kk]))


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_compact_thread_counts(rng, nthreads):
    V = rng.standard_normal((23, 40, 12))
    _both(V, 12, nthreads)


def _batch(draw, n, r, dtype):
    kind = draw(st.sampled_from(["random", "dup", "deficient", "zero", "scaled", "nan", "inf"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, r))
    if kind == "dup":  # duplicated rows: ties go to the lowest row
        k = draw(st.integers(1, n))
        src = rng.integers(0, n, size=k)
        dst = rng.integers(0, n, size=k)
        A[dst] = A[src]
        if draw(st.booleans()):
            A[dst] *= -1.0
    elif kind == "deficient":  # fill rows: rank < r
        q = draw(st.integers(0, max(0, min(n, r) - 1)))
        A = rng.standard_normal((n, q)) @ rng.standard_normal((q, r)) if q else np.zeros((n, r))
        A[rng.integers(0, n)] *= 3.0
    elif kind == "zero":
        A[:] = 0.0
    elif kind == "scaled":
        A *= draw(st.sampled_from([1e-300, 1e300, 2.0**-600, 2.0**600, 1e-30, 1e30] if dtype == np.float64
                                  else [1e-30, 1e30, 2.0**-70, 2.0**70]))
    elif kind == "nan":
        A[rng.integers(0, n), rng.integers(0, r)] = np.nan
    elif kind == "inf":
        A[rng.integers(0, n), rng.integers(0, r)] = -np.inf
    with np.errstate(over="ignore", under="ignore"):
        return A.astype(dtype)


@st.composite
def _batches(draw):
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    lanes = 4 if dtype == np.float64 else 8
    nb = draw(st.integers(1, 3 * lanes + 1))  # often not a multiple of the lane count
    r = draw(st.integers(1, 20))
    n = draw(st.integers(r, 3 * r + 5))
    kk = draw(st.integers(1, r))
    return np.stack([_batch(draw, n, r, dtype) for _ in range(nb)]), kk


@given(_batches())
def test_compact_property_equals_batched(args):
    V, kk = args
    piv, rank, bad = _both(V, kk)
    finite = np.isfinite(V).all(axis=(1, 2))
    assert_array_equal(bad, ~finite)
    assert_array_equal(piv[bad], np.tile(np.arange(kk), (int(bad.sum()), 1)))
    assert (rank[bad] == 0).all()
    for b in np.flatnonzero(finite):
        assert len(set(piv[b].tolist())) == kk  # distinct rows, fill rows included
        if V.dtype == np.float64 and rank[b] == kk and np.abs(V[b]).max() < 1e200 and np.abs(V[b]).max() > 1e-200:
            ref, ref_rank = gt.reference_deim(V[b], kk)
            assert ref_rank == kk
            assert_array_equal(piv[b], ref)


def test_compact_ties_to_lowest_row():
    base = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.25]])
    A = np.vstack([base, base, -base])  # every row appears three times
    V = np.stack([A, A * 4.0, A[::-1].copy(), A * 1e-200, A * 1e200])
    piv = _both(V, 2)[0]
    for b in (0, 1, 3, 4):
        assert_array_equal(piv[b], [1, 0])
    assert_array_equal(piv[2], [1, 2])  # reversed: -b2, -b1, -b0, b2, ...: the lowest of the equal rows


def test_compact_mixed_scales_and_nan_in_one_group(rng):
    V = rng.standard_normal((6, 30, 10))
    V[0] *= 1e-300
    V[1] *= 1e300
    V[2, 4, 5] = np.nan
    V[3] *= 2.0**-1070 / np.abs(V[3]).max()  # subnormal batch
    piv, _, bad = _both(V, 10)
    assert_array_equal(bad, [False, False, True, False, False, False])
    for b in (0, 1, 4, 5):
        assert_array_equal(piv[b], gt.lu_pivots(V[b] / np.abs(V[b]).max()))


def test_compact_rank_deficient_fill_rows(rng):
    """Rank-3 batches: fill rows (by row norm) after the numerical rank, identical to _deim_batched (in _both)."""
    V = np.stack([rng.standard_normal((40, 3)) @ rng.standard_normal((3, 8)) for _ in range(7)])
    V[:, ::5] = V[:, 1:2]  # exact duplicate rows as well
    piv, rank, _ = _both(V, 8)
    assert ((rank >= 3) & (rank < 8)).all()  # round-off may leave one residual above the tolerance
    for b in range(7):
        assert len(set(piv[b].tolist())) == 8
        ref, ref_rank = gt.reference_deim(V[b], 8)
        if ref_rank == rank[b]:
            assert_array_equal(piv[b], ref)
