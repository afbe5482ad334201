"""maxvol's guarantees on every finite input (issue 10, items 1 and 5).

* Scale invariance: the rows of ``c V`` are the rows of ``V`` for every power of
  two ``c`` for which ``c V`` is exactly representable, in every method, for
  k <= r, k > r and with refinement (the squared norms of the float64 kernels
  and the DEIM eliminations must neither overflow nor underflow).
* Refinement from a singular start warns (truthfully: the greedy block is
  singular, nothing was filled) and keeps the start (it used to divide by zero
  inside a kernel); a start the greedy step accepted as full rank is refined.
* The k > r extension of both backends gives the same rows, and raises
  nothing, on nearly collinear columns (a Gram matrix singular in float64).
* A fuzz of small random and degenerate inputs: k unique in-range rows, and no
  exception or warning other than RankDeficiencyWarning / ConvergenceWarning.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_array_equal

import graft_array as ga

from conftest import CPU_BACKENDS

METHODS = ("deim", "volume", "tournament")
ALLOWED = (ga.RankDeficiencyWarning, ga.ConvergenceWarning)


def _quiet(V, k, **kwargs):
    """maxvol with the two legal warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ga.RankDeficiencyWarning)
        warnings.simplefilter("ignore", ga.ConvergenceWarning)
        return ga.maxvol(V, k, **kwargs)


def _assert_valid(idx, n, k):
    idx = np.asarray(idx)
    assert idx.shape[-1] == k and idx.dtype == np.int64
    for row in idx.reshape(-1, k):
        assert len(set(row.tolist())) == k, row
        assert row.min() >= 0 and row.max() < n, row


def _exact_exponents(V):
    """``(lo, hi)``: every ``2^e``, ``lo <= e <= hi``, keeps ``V 2^e`` exactly representable.

    No entry overflows and no nonzero entry becomes subnormal.
    """
    fi = np.finfo(V.dtype)
    a = np.abs(V.astype(np.float64))
    _, e_max = np.frexp(a.max())  # max = f 2^e_max, 0.5 <= f < 1
    _, e_min = np.frexp(a[a > 0].min())
    hi = int(fi.maxexp) - int(e_max)  # f 2^(e_max + e) < 2^maxexp
    lo = int(fi.minexp) + 1 - int(e_min)  # >= 2^(e_min - 1 + e) >= tiny = 2^minexp
    return lo, hi


def _pow2(V, e):
    """``V 2^e`` exactly (through float64: ``2^e`` itself may not be a float32)."""
    out = np.ldexp(V.astype(np.float64), e).astype(V.dtype)
    assert_array_equal(np.ldexp(out.astype(np.float64), -e).astype(V.dtype), V)
    return out


# --------------------------------------------------------------------------------------
# scale invariance
# --------------------------------------------------------------------------------------
cases = st.fixed_dictionaries({
    "n": st.integers(1, 9),
    "r": st.integers(1, 4),
    "batch": st.sampled_from([None, 2]),
    "dtype": st.sampled_from([np.float32, np.float64]),
    "seed": st.integers(0, 2**32 - 1),
})


def _check_scale_invariance(case, data, backend):
    n, r = case["n"], case["r"]
    shape = (n, r) if case["batch"] is None else (case["batch"], n, r)
    V = np.random.default_rng(case["seed"]).standard_normal(shape).astype(case["dtype"])
    lo, hi = _exact_exponents(V)
    e = data.draw(st.integers(lo, hi), label="e")
    cV = _pow2(V, e)
    k = data.draw(st.integers(1, n), label="k")
    kk = min(k, r)
    for method in METHODS:
        tile_rows = data.draw(st.sampled_from([None, 2 * kk]), label="tile_rows") if method == "tournament" else None
        opts = dict(method=method, tile_rows=tile_rows, backend=backend)
        want = _quiet(V, k, **opts)
        got = _quiet(cV, k, **opts)
        _assert_valid(got, n, k)
        assert_array_equal(got, want, err_msg=f"{method} k={k} e={e}")
        if k <= r:
            want = _quiet(V, k, refine=True, **opts)
            got = _quiet(cV, k, refine=True, **opts)
            _assert_valid(got, n, k)
            assert_array_equal(got, want, err_msg=f"{method} refine k={k} e={e}")


@settings(max_examples=60, deadline=None)
@given(cases, st.data())
def test_property_power_of_two_scale_invariance_numba(case, data):
    _check_scale_invariance(case, data, "numba")


@settings(max_examples=25, deadline=None)
@given(cases, st.data())
def test_property_power_of_two_scale_invariance_array_api(case, data):
    _check_scale_invariance(case, data, "array_api")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("end", ["top", "bottom"])
def test_scale_invariance_at_both_ends_of_the_range(backend, dtype, end):
    """The largest and the smallest exact power-of-two scalings (max |V| next to the overflow threshold, or
    the smallest |entry| at the smallest normal number), batched, all methods, k <= r, k > r and refine."""
    V = np.random.default_rng(7).standard_normal((3, 40, 6)).astype(dtype)
    lo, hi = _exact_exponents(V)
    cV = _pow2(V, hi if end == "top" else lo)
    for method in METHODS:
        for k, refine in ((6, False), (4, True), (6, True), (11, False), (40, False)):
            want = _quiet(V, k, method=method, refine=refine, tile_rows=12, backend=backend)
            got = _quiet(cV, k, method=method, refine=refine, tile_rows=12, backend=backend)
            _assert_valid(got, 40, k)
            assert_array_equal(got, want, err_msg=f"{method} k={k} refine={refine}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_issue_example_huge_float64(backend, method):
    V = np.random.default_rng(0).standard_normal((30, 4))
    for k in (6, 4, 30):
        got = ga.maxvol(V * 1e200, k, method=method, backend=backend)
        _assert_valid(got, 30, k)
        assert_array_equal(got, ga.maxvol(V, k, method=method, backend=backend))
    assert_array_equal(ga.maxvol(V * 1e200, 4, method=method, refine=True, backend=backend),
                       ga.maxvol(V, 4, method=method, refine=True, backend=backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e19, 1e30, 1e-30, 1e-36])
def test_float32_large_and_small(backend, method, scale):
    V = np.random.default_rng(0).standard_normal((30, 4))
    ref = V.astype(np.float32)
    V32 = (V * scale).astype(np.float32)
    for k in (6, 4):
        got = ga.maxvol(V32, k, method=method, backend=backend)
        _assert_valid(got, 30, k)
        assert_array_equal(got, ga.maxvol(ref, k, method=method, backend=backend))


def test_array_api_strict_huge_input():
    xs = pytest.importorskip("array_api_strict")
    V = np.random.default_rng(0).standard_normal((2, 30, 4))
    for method in METHODS:
        got = np.asarray(ga.maxvol(xs.asarray(V * 1e200), 6, method=method))
        assert_array_equal(got, ga.maxvol(V, 6, method=method, backend="numba"))


# --------------------------------------------------------------------------------------
# refinement from a singular start
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_refine_singular_start_warns_and_keeps_start(backend, method):
    V = np.array([[0.0, 1.0], [0.0, 2.0]])  # full rank 1 as rows of V, but V[:, :1] = 0
    start = _quiet(V, 1, method=method, backend=backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ga.maxvol(V, 1, method=method, refine=True, backend=backend)
    assert_array_equal(got, start)
    _assert_valid(got, 2, 1)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and caught[0].category is ga.RankDeficiencyWarning, msgs
    if method == "volume":  # volume accepts row 1 (norm 2); its block V[[1], :1] = 0 is singular
        assert msgs[0] == ("the 1 x 1 block V[S, :1] of the greedy rows S is numerically singular; "
                           "refinement was skipped there and the greedy rows are returned."), msgs
    else:  # deim / tournament: column 0 is zero, the greedy step itself is deficient (a fill row)
        assert msgs[0].startswith("V has numerical rank 0 < min(k, r) = 1; the 1 remaining position(s) were filled"), msgs


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_refine_start_accepted_by_greedy_is_refined_without_warning(backend, method):
    """A start the greedy step accepted as full rank (pivot 1e-15 > f eps max|V|, f = 3) is refined, and no
    warning claims a fill (refine's own singularity test used to be 8 k eps64 max|A_S|, stricter, and lowered
    the rank, so maxvol warned "numerical rank 1 ... filled")."""
    V = np.array([[1.0, 0.0], [0.0, 1e-15], [0.5, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = ga.maxvol(V, 2, method=method, backend=backend)
        got = ga.maxvol(V, 2, method=method, refine=True, backend=backend)
    assert_array_equal(want, [0, 1])
    assert_array_equal(got, [0, 1])  # already dominant: max|B| = 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_refine_skipped_warning_batched_counts(backend):
    V = np.stack([np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 0.5]]), np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])])
    with pytest.warns(ga.RankDeficiencyWarning,
                      match=r"^the 1 x 1 block V\[S, :1\] of the greedy rows S is numerically singular "
                            r"in 1 of 2 batches \(first: batch 0\); refinement was skipped there"):
        got = ga.maxvol(V, 1, method="volume", refine=True, backend=backend)
    assert_array_equal(got, [[1], [2]])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_refine_singular_batch_is_skipped_others_refined(backend):
    rng = np.random.default_rng(3)
    V = rng.standard_normal((3, 30, 3))
    V[1, :, 1] = 2.0 * V[1, :, 0]  # batch 1: V[:, :2] has rank 1, V itself rank 2
    with pytest.warns(ga.RankDeficiencyWarning, match=r"numerically singular in 1 of 3 batches \(first: batch 1\); "
                                                      r"refinement was skipped"):
        got = ga.maxvol(V, 2, method="volume", refine=True, tol=1.0 + 1e-9, backend=backend)
    _assert_valid(got, 30, 2)
    assert_array_equal(got[1], _quiet(V[1], 2, method="volume", backend=backend))
    for b in (0, 2):
        assert_array_equal(got[b], ga.maxvol(V[b], 2, method="volume", refine=True, tol=1.0 + 1e-9, backend=backend))


# --------------------------------------------------------------------------------------
# fuzz: only valid outcomes
# --------------------------------------------------------------------------------------
def _nearly_collinear(rng, n, r, rel=1e-9):
    """Columns that are one column times ``1 + rel * noise``: full rank, but a Gram matrix singular in float64."""
    a = rng.standard_normal(n)
    return a[:, None] * (1.0 + rel * rng.standard_normal((n, r)))


def _fuzz_matrix(rng, n, r):
    kind = rng.integers(8)
    if kind == 0:
        V = rng.standard_normal((n, r))
    elif kind == 1:
        V = np.zeros((n, r))
    elif kind == 2:  # repeated rows
        V = rng.standard_normal((max(1, n // 2), r))[rng.integers(0, max(1, n // 2), n)]
    elif kind == 3:  # rank-deficient product
        q = int(rng.integers(1, r + 1))
        V = rng.standard_normal((n, q)) @ rng.standard_normal((q, r))
    elif kind == 4:  # small integers (exact ties and exact singular blocks)
        V = rng.integers(-2, 3, (n, r)).astype(np.float64)
    elif kind == 5:  # zero columns / rows sprinkled into normals
        V = rng.standard_normal((n, r)) * (rng.random((n, r)) < 0.6)
    elif kind == 6:  # one direction only, plus a zero first column
        V = np.outer(rng.standard_normal(n), rng.standard_normal(r))
        V[:, 0] = 0.0
    else:  # nearly collinear columns (k > r: the Gram matrix of the pivots is singular in float64)
        V = _nearly_collinear(rng, n, r, rel=float(rng.choice([1e-6, 1e-9, 1e-12])))
    if rng.random() < 0.3:  # far from 1
        V = V * 10.0 ** float(rng.choice([-300, -150, -35, 35, 150, 300]))
    if rng.random() < 0.3:
        with np.errstate(over="ignore"):  # a huge value becomes inf: the case is skipped
            V = V.astype(np.float32)
    return V


def _fuzz(backend, cases):
    rng = np.random.default_rng(12345)
    for case in range(cases):
        n = int(rng.integers(1, 9))
        r = int(rng.integers(1, 5))
        V = _fuzz_matrix(rng, n, r)
        if not np.all(np.isfinite(V)):  # a float32 cast of a huge value
            continue
        if rng.random() < 0.2:
            with np.errstate(over="ignore"):
                V = np.stack([V, _fuzz_matrix(rng, n, r).astype(V.dtype)])
            if not np.all(np.isfinite(V)):
                continue
        method = METHODS[case % 3]
        k = int(rng.integers(1, min(n, r) + 1))
        k_any = int(rng.integers(1, n + 1))
        for kk, refine in ((k, True), (k_any, False)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                idx = ga.maxvol(V, kk, method=method, refine=refine, backend=backend)
            others = [w for w in caught if not issubclass(w.category, ALLOWED)]
            assert not others, (case, method, kk, refine, V, others[0].message)
            _assert_valid(idx, n, kk)


def test_fuzz_refine_numba():
    _fuzz("numba", 3000)


def test_fuzz_refine_array_api():
    _fuzz("array_api", 400)


def _twin_cases():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(4, 13))
        r = int(rng.integers(2, 4))
        V = _nearly_collinear(rng, n, r, rel=float(rng.choice([1e-7, 1e-9, 1e-11])))
        if trial % 3 == 2:
            V = np.stack([V, _nearly_collinear(rng, n, r)])
        yield trial, V, int(rng.integers(r + 1, n + 1))


@pytest.mark.parametrize("method", METHODS)
def test_rect_twins_agree_on_nearly_collinear_columns(method):
    """k > r on nearly collinear columns: the generic twin used to invert the float64-singular Gram matrix
    (LinAlgError, or rows different from the Numba kernel's); now both run the same Cholesky with the same
    floor and give the same rows. Also for torch tensors on the array_api backend (what a fork child of an
    OpenMP parent runs)."""
    torch = None
    try:
        import torch
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    a = rng.standard_normal(8)  # the reported case
    cases = [(-1, np.stack([a, a * (1 + 1e-9 * rng.standard_normal(8))], 1), 6)] + list(_twin_cases())
    for trial, V, k in cases:
        want = _quiet(V, k, method=method, backend="numba")
        n = V.shape[-2]
        _assert_valid(want, n, k)
        got = _quiet(V, k, method=method, backend="array_api")
        assert_array_equal(got, want, err_msg=f"trial {trial}")
        if torch is not None:
            got = _quiet(torch.from_numpy(V), k, method=method, backend="array_api")
            assert_array_equal(got.numpy(), want, err_msg=f"torch, trial {trial}")


def test_rect_reported_case_no_linalg_error():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = rng.standard_normal(8)
        V = np.stack([a, a * (1 + 1e-9 * rng.standard_normal(8))], 1)
        want = _quiet(V, 6, method="volume", backend="numba")
        assert_array_equal(_quiet(V, 6, method="volume", backend="array_api"), want)


# ---- the rank tolerance f eps max|V|, f = max(r, min(n, r**2)): numpy's max(n, r), capped at r**2 ----------------
def test_rank_tol_factor_values():
    from graft_array._common import rank_tol_factor

    assert rank_tol_factor(128, 32) == 128  # a batch of n <= r**2 rows: numpy matrix_rank's max(n, r)
    assert rank_tol_factor(10**8, 32) == 32 * 32  # tall: the cap
    assert rank_tol_factor(3, 8) == 8
    assert rank_tol_factor(10**9, 1) == 1


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10**12), r=st.integers(1, 4096))
def test_rank_tol_factor_is_numpys_rule_capped(n, r):
    from graft_array._common import rank_tol_factor

    f = rank_tol_factor(n, r)
    assert r <= f <= max(n, r)
    assert f == (max(n, r) if n <= r * r else r * r)


def _near_deficient(n, seed=5):
    """A rank-2 product plus 1e-13 noise: pivots 3 and 4 of LU are about 1e-13 max|noise|."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)) @ rng.standard_normal((2, 4)) + 1e-13 * rng.standard_normal((n, 4))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_rank_tolerance_does_not_grow_with_rows(backend, method):
    """Pivots between 16 eps max|V| (the tolerance of 4 columns) and 4096 eps max|V| (numpy's rule for 4096 rows)
    are pivots, not rank deficiency: the rows are LAPACK's (getrf, geqp3), with no warning."""
    from graft_array.testing import lu_pivots, qrcp_pivots

    V = _near_deficient(4096)
    piv = lu_pivots(V)
    import scipy.linalg

    lu = scipy.linalg.lu_factor(V, check_finite=False)[0]
    pivots = np.abs(np.diag(lu)) / (np.finfo(V.dtype).eps * np.abs(V).max())
    assert 16 < pivots[2:].min() and pivots[2:].max() < 4096, pivots  # the construction: between the two rules
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RankDeficiencyWarning fails the test
        rows = ga.maxvol(V, 4, method=method, backend=backend)
    if method == "deim":
        assert_array_equal(rows, piv)
    elif method == "volume":
        assert_array_equal(rows, qrcp_pivots(V, 4))
    assert len(set(rows.tolist())) == 4


@pytest.mark.parametrize("method", METHODS)
def test_float32_taller_than_one_over_eps_has_full_rank(method):
    """9e6 float32 rows > 1/eps32 = 8.4e6: numpy's max(n, r) eps max|V| would exceed max|V| (rank 0, every row a
    fill row); the capped tolerance keeps the rank, and deim's rows are LAPACK sgetrf's."""
    from graft_array.testing import lu_pivots

    V = np.random.default_rng(0).standard_normal((9_000_000, 2), dtype=np.float32)
    assert 9_000_000 * np.finfo(np.float32).eps > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = ga.maxvol(V, 2, method=method)
    if method == "deim":
        assert_array_equal(rows, lu_pivots(V))
    else:
        assert np.abs(np.linalg.det(V[rows].astype(np.float64))) > 0.5 * np.abs(np.linalg.det(V[lu_pivots(V)]))
