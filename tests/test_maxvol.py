import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from numpy.testing import assert_array_equal

import graft_array as ga
from graft_array import testing as gt

from conftest import CPU_BACKENDS, ill_conditioned, readonly


def _no_warn_maxvol(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ga.maxvol(*args, **kwargs)


# --------------------------------------------------------------------------------------
# exact equivalences with LAPACK (scipy)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", [1, 7, 40])
@pytest.mark.parametrize("kind", ["random", "ill"])
def test_deim_equals_lu_partial_pivoting(rng, backend, k, kind):
    V = rng.standard_normal((500, 40)) if kind == "random" else ill_conditioned(rng, 500, 40, decades=6)
    got = _no_warn_maxvol(readonly(V), k, method="deim", backend=backend)
    assert_array_equal(got, gt.lu_pivots(V[:, :k]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_deim_float32_equals_lu_float32(rng, backend):
    V = rng.standard_normal((400, 24)).astype(np.float32)
    got = _no_warn_maxvol(V, 24, method="deim", backend=backend)
    assert_array_equal(got, gt.lu_pivots(V))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["random", "ill"])
def test_volume_equals_qr_column_pivoting(rng, backend, kind):
    V = rng.standard_normal((600, 30)) if kind == "random" else ill_conditioned(rng, 600, 30, decades=10)
    got = _no_warn_maxvol(readonly(V), 30, method="volume", backend=backend)
    assert_array_equal(got, gt.qrcp_pivots(V))
    assert_array_equal(_no_warn_maxvol(V, 11, method="volume", backend=backend), gt.qrcp_pivots(V, 11))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_volume_float32_input(rng, backend):
    V = rng.standard_normal((300, 16)).astype(np.float32)
    got = _no_warn_maxvol(V, 16, method="volume", backend=backend)
    assert_array_equal(got, gt.qrcp_pivots(V.astype(np.float64)))


def test_volume_is_rotation_invariant_deim_is_not(rng):
    V = rng.standard_normal((400, 12))
    Qr, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert_array_equal(ga.maxvol(V, 12, method="volume"), ga.maxvol(V @ Qr, 12, method="volume"))
    assert not np.array_equal(ga.maxvol(V, 12, method="deim"), ga.maxvol(V @ Qr, 12, method="deim"))


# --------------------------------------------------------------------------------------
# twins: Numba == generic == slow reference
# --------------------------------------------------------------------------------------
CASES = [
    # (n, r, k, method, refine, tile_rows)
    (60, 5, 5, "deim", False, None),
    (60, 5, 3, "volume", False, None),
    (300, 12, 12, "tournament", False, 40),
    (300, 12, 7, "tournament", False, 24),
    (1000, 8, 8, "tournament", False, None),
    (80, 6, 15, "deim", False, None),
    (80, 6, 15, "volume", False, None),
    (80, 6, 9, "tournament", False, 20),
    (100, 10, 10, "deim", True, None),
    (100, 10, 6, "volume", True, None),
    (100, 10, 10, "tournament", True, 30),
    (7, 3, 7, "deim", False, None),
    (1, 1, 1, "volume", False, None),
    (2, 5, 2, "deim", False, None),
]


@pytest.mark.parametrize("n,r,k,method,refine,tile_rows", CASES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backends_match_reference(rng, backend, n, r, k, method, refine, tile_rows):
    V = rng.standard_normal((n, r))
    expected, _ = gt.reference_maxvol(V, k, method=method, refine=refine, tile_rows=tile_rows)
    got = ga.maxvol(readonly(V), k, method=method, refine=refine, tile_rows=tile_rows, backend=backend)
    assert_array_equal(got, expected)


@pytest.mark.parametrize("method", ["deim", "volume", "tournament"])
def test_numba_equals_generic_batched(rng, method):
    V = rng.standard_normal((6, 200, 10))
    a = ga.maxvol(V, 14, method=method, tile_rows=40, backend="numba")
    b = ga.maxvol(V, 14, method=method, tile_rows=40, backend="array_api")
    assert a.shape == (6, 14) and a.dtype == np.int64
    assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["deim", "volume", "tournament"])
def test_batched_equals_per_batch(rng, method):
    V = rng.standard_normal((9, 128, 16)).astype(np.float32)
    got = ga.maxvol(readonly(V), 16, method=method)
    for b in range(V.shape[0]):
        assert_array_equal(got[b], ga.maxvol(V[b], 16, method=method))


def test_rect_extension_equals_bruteforce_greedy(rng):
    V = rng.standard_normal((70, 4))
    for method in ("deim", "volume"):
        head = ga.maxvol(V, 4, method=method)
        assert_array_equal(ga.maxvol(V, 11, method=method), gt.reference_rect(V, head, 11))


def test_tournament_volume_close_to_deim(rng):
    U, _ = np.linalg.qr(rng.standard_normal((4000, 16)))
    t = ga.maxvol(U, 16, method="tournament", tile_rows=64)
    d = ga.maxvol(U, 16, method="deim")
    assert len(set(t.tolist())) == 16
    assert gt.log_volume(U, t) >= gt.log_volume(U, d) - 0.05 * abs(gt.log_volume(U, d)) - 1.0


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------
shapes = st.tuples(st.integers(1, 60), st.integers(1, 12), st.integers(0, 2**32 - 1))


@given(shapes, st.sampled_from(["deim", "volume", "tournament"]), st.data())
def test_property_unique_in_range_length(shape, method, data):
    n, r, seed = shape
    k = data.draw(st.integers(1, n))
    V = np.random.default_rng(seed).standard_normal((n, r))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ga.RankDeficiencyWarning)
        idx = ga.maxvol(V, k, method=method)
    assert idx.shape == (k,) and idx.dtype == np.int64
    assert len(set(idx.tolist())) == k
    assert idx.min() >= 0 and idx.max() < n


@given(shapes, st.sampled_from(["deim", "volume"]), st.data())
def test_property_nested_prefixes(shape, method, data):
    n, r, seed = shape
    k = data.draw(st.integers(1, n))
    m = data.draw(st.integers(1, k))
    V = np.random.default_rng(seed).standard_normal((n, r))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ga.RankDeficiencyWarning)
        assert_array_equal(ga.maxvol(V, k, method=method)[:m], ga.maxvol(V, m, method=method))


@given(st.integers(2, 10), st.integers(0, 2**32 - 1), st.sampled_from(["deim", "volume", "tournament"]))
def test_property_refine_dominance_and_volume(r, seed, method):
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((6 * r + 5, r))
    start = ga.maxvol(V, r, method=method)
    idx = ga.maxvol(V, r, method=method, refine=True, tol=1.01, max_iters=500)
    B = V @ np.linalg.inv(V[idx])
    assert np.max(np.abs(B)) <= 1.01 + 1e-9
    assert gt.log_volume(V, idx) >= gt.log_volume(V, start) - 1e-9


@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.sampled_from(["deim", "volume", "tournament"]))
def test_property_volume_beats_random_rows(r, seed, method):
    rng = np.random.default_rng(seed)
    n = 8 * r
    V = rng.standard_normal((n, r))
    vol = gt.log_volume(V, ga.maxvol(V, r, method=method))
    rand = [gt.log_volume(V, rng.choice(n, r, replace=False)) for _ in range(15)]
    assert vol >= np.median(rand)


# --------------------------------------------------------------------------------------
# rank deficiency and degenerate inputs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ["deim", "volume", "tournament"])
def test_rank_deficient_fills_and_warns(rng, backend, method):
    V = rng.standard_normal((50, 3)) @ rng.standard_normal((3, 8))  # rank 3
    with pytest.warns(ga.RankDeficiencyWarning, match=r"numerical rank 3 < min\(k, r\) = 8"):
        idx = ga.maxvol(V, 8, method=method, backend=backend, tile_rows=16)
    assert len(set(idx.tolist())) == 8
    expected, rank = gt.reference_maxvol(V, 8, method=method, tile_rows=16)
    assert rank == 3
    assert_array_equal(idx, expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ["deim", "volume", "tournament"])
def test_zero_matrix_takes_lowest_rows(backend, method):
    V = np.zeros((10, 4))
    with pytest.warns(ga.RankDeficiencyWarning, match="rank 0"):
        idx = ga.maxvol(V, 6, method=method, backend=backend)
    assert_array_equal(idx, np.arange(6))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_column_and_duplicate_rows(backend, rng):
    V = rng.standard_normal((30, 5))
    V[:, 0] = 0.0
    with pytest.warns(ga.RankDeficiencyWarning):
        idx = ga.maxvol(V, 5, method="deim", backend=backend)
    expected, rank = gt.reference_maxvol(V, 5, method="deim")
    assert rank == 4
    assert_array_equal(idx, expected)
    D = np.repeat(rng.standard_normal((4, 6)), 5, axis=0)  # 20 rows, 4 distinct
    with pytest.warns(ga.RankDeficiencyWarning):
        idx = ga.maxvol(D, 6, method="volume", backend=backend)
    assert len({tuple(D[i]) for i in idx[:4]}) == 4  # the first 4 picks are the 4 distinct rows


def test_rank_deficient_rect_extension_fills(rng):
    V = rng.standard_normal((40, 2)) @ rng.standard_normal((2, 4))
    with pytest.warns(ga.RankDeficiencyWarning):
        idx = ga.maxvol(V, 9, method="volume")
    assert len(set(idx.tolist())) == 9
    assert_array_equal(idx, gt.reference_maxvol(V, 9, method="volume")[0])


def test_refine_max_iters_warns(rng):
    V = rng.standard_normal((200, 12))
    with pytest.warns(ga.ConvergenceWarning, match="max_iters=1"):
        ga.maxvol(V, 12, method="deim", refine=True, tol=1.0, max_iters=1)


# --------------------------------------------------------------------------------------
# inputs are never written to; other array types in and out
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["deim", "volume", "tournament"])
@pytest.mark.parametrize("refine", [False, True])
def test_input_not_modified(rng, method, refine):
    V = rng.standard_normal((90, 9))
    before = V.copy()
    ga.maxvol(V, 9, method=method, refine=refine)
    ga.maxvol(V, 20, method=method)
    assert_array_equal(V, before)


def test_non_contiguous_input(rng):
    big = rng.standard_normal((200, 30))
    V = big[::2, ::3]
    assert_array_equal(ga.maxvol(V, 10), ga.maxvol(np.ascontiguousarray(V), 10))
    assert_array_equal(ga.maxvol(np.asfortranarray(V), 10, method="volume"), ga.maxvol(V, 10, method="volume"))


def test_torch_cpu_in_and_out(rng):
    torch = pytest.importorskip("torch")
    V = rng.standard_normal((120, 8))
    t = torch.tensor(V, requires_grad=True)
    out = ga.maxvol(t, 8, method="volume")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64 and out.device.type == "cpu"
    assert_array_equal(out.numpy(), ga.maxvol(V, 8, method="volume"))
    assert ga.which_backend(t) == "numba"
    nc = torch.tensor(rng.standard_normal((8, 120))).T  # non-contiguous view
    assert_array_equal(ga.maxvol(nc, 8).numpy(), ga.maxvol(nc.numpy(), 8))
    half = torch.tensor(V, dtype=torch.bfloat16)
    assert ga.maxvol(half, 8).shape == (8,)
    batched = torch.tensor(rng.standard_normal((3, 50, 4)), dtype=torch.float32)
    assert ga.maxvol(batched, 4).shape == (3, 4)


def test_array_api_strict_in_and_out(rng):
    xs = pytest.importorskip("array_api_strict")
    V = rng.standard_normal((100, 7))
    a = xs.asarray(V)
    assert ga.which_backend(a) == "array_api"
    out = ga.maxvol(a, 9, method="deim")
    assert type(out) is type(a) and out.dtype == xs.int64
    assert_array_equal(np.asarray(out), ga.maxvol(V, 9, method="deim"))
    out3 = ga.maxvol(xs.asarray(V.reshape(2, 50, 7)), 7, method="tournament", tile_rows=14)
    assert out3.shape == (2, 7)


# --------------------------------------------------------------------------------------
# errors: each names the argument, the expectation and what came
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "V,kwargs,exc,match",
    [
        ([[1.0, 2.0]], {}, TypeError, r"maxvol expects 'V' to be an array .* got an object of type builtins.list"),
        (np.ones(5), {}, ValueError, r"'V' of shape \(n, r\) or \(batch, n, r\) .* got shape \(5,\), dtype float64"),
        (np.ones((2, 2, 2, 2)), {}, ValueError, r"got shape \(2, 2, 2, 2\)"),
        (np.ones((4, 3), dtype=np.int64), {}, ValueError, r"real floating dtype .* dtype int64"),
        (np.ones((4, 3), dtype=np.complex128), {}, ValueError, r"real floating dtype .* dtype complex128"),
        (np.ones((0, 3)), {}, ValueError, r"at least 1 row\(s\) .* shape \(0, 3\)"),
        (np.ones((4, 3)), {"k": 5}, ValueError, r"'k' parameter of maxvol must be an int in the range \[1, 4\]\. Got 5"),
        (np.ones((4, 3)), {"k": 0}, ValueError, r"'k' parameter .* Got 0 instead"),
        (np.ones((4, 3)), {"k": 2.0}, TypeError, r"'k' parameter .* Got 2\.0 instead"),
        (np.ones((4, 3)), {"k": True}, TypeError, r"'k' parameter .* Got True instead"),
        (np.ones((4, 3)), {"method": "maxvol"}, ValueError, r"'method' parameter .* 'deim', 'volume', 'tournament'\. Got 'maxvol'"),
        (np.ones((4, 3)), {"tol": 0.5}, ValueError, r"'tol' parameter of maxvol must be a finite float >= 1\.0\. Got 0\.5"),
        (np.ones((4, 3)), {"tol": "1"}, TypeError, r"'tol' parameter"),
        (np.ones((4, 3)), {"max_iters": -1}, ValueError, r"'max_iters' parameter .* >= 0"),
        (np.ones((4, 3)), {"refine": 1}, TypeError, r"'refine' parameter of maxvol must be a bool"),
        (np.ones((4, 3)), {"k": 4, "refine": True}, ValueError, r"refine=True needs k <= r .* k=4 .* 3 column"),
        (np.ones((40, 3)), {"k": 3, "tile_rows": 5}, ValueError, r"'tile_rows' parameter .* >= 6 or None\. Got 5"),
        (np.ones((4, 3)), {"backend": "gpu"}, ValueError, r"'backend' parameter of maxvol must be one of"),
        (np.ones((4, 3)), {"backend": "cuda"}, ga.BackendUnavailableError, r"backend='cuda' runs on CuPy .* device cpu"),
    ],
)
def test_bad_input_errors(V, kwargs, exc, match):
    kwargs = dict(kwargs)
    k = kwargs.pop("k", 2)
    with pytest.raises(exc, match=match):
        ga.maxvol(V, k, **kwargs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_rejected(backend, bad):
    V = np.ones((6, 3))
    V[4, 1] = bad
    with pytest.raises(ValueError, match=r"only finite values; got NaN or infinity in shape \(6, 3\)"):
        ga.maxvol(V, 2, backend=backend)


def test_numba_backend_refuses_other_namespaces():
    xs = pytest.importorskip("array_api_strict")
    with pytest.raises(ga.BackendUnavailableError, match=r"backend='numba' runs on NumPy arrays .* got shape \(3, 2\)"):
        ga.maxvol(xs.ones((3, 2)), 1, backend="numba")


def test_which_backend():
    assert ga.which_backend(np.ones((2, 2))) == "numba"
    with pytest.raises(TypeError, match="which_backend expects an array"):
        ga.which_backend([1, 2])
