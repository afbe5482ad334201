"""Input validation of maxvol, select and the adapters' paths into them (issue 10, items 4, 6, 7, 8, 10).

No input slips through: every bad one gets an error naming the argument, every
odd-but-valid one (half precision, non-native byte order, strided views) gives
the rows of the plain native array, and no input is ever modified.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import graft_array as ga
from graft_array import LastLayerGrads

from conftest import readonly

I64 = 2**63 - 1
EXTENDED = np.dtype(np.longdouble).itemsize > 8  # float80 in 12 / 16 bytes on x86; float64 on some platforms


def _data(seed=0, nb=2, n=24, d=8, p=12, C=3, h=5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((nb, n, d)), rng.standard_normal((nb, n, p)),
            rng.standard_normal((nb, n, C)), rng.standard_normal((nb, n, h)))


def _same(a, b):
    assert_array_equal(np.asarray(a.indices), np.asarray(b.indices))
    assert_array_equal(np.asarray(a.sizes), np.asarray(b.sizes))
    assert_allclose(np.asarray(a.weights), np.asarray(b.weights), rtol=1e-6, atol=1e-9)


# --- 4. offsets: non-negative, offset + n fits int64, checked before the cast -----------------------------------------

@pytest.mark.parametrize("off", [
    np.array([0, 2**64 - 1], dtype=np.uint64),  # wrapped to -1 by the int64 cast
    np.array([0, 2**63 - 1], dtype=np.uint64),
    np.array([0, I64 - 23], dtype=np.int64),  # the last row's index would be I64 + 1: negative
    np.array([-1, 0]),
    [5, -(2**40)],
])
def test_offsets_overflow_and_negative_refused(off):
    F, _, _, _ = _data()
    with pytest.raises(ValueError, match=r"The 'offsets' parameter of select must .*non-negative.*Got offsets\[\d\]"):
        ga.select(readonly(F), offsets=off)


def test_offsets_overflow_refused_on_ragged_and_masked_paths():
    F, _, _, _ = _data()
    with pytest.raises(ValueError, match=r"'offsets' parameter of select"):
        ga.select([F[0], F[1, :10]], offsets=np.array([0, I64 - 9], dtype=np.int64))
    # a padded batch's indices reach its padded length (24), not its number of kept rows
    mask = np.ones((2, 24), bool)
    mask[:, 12:] = False
    with pytest.raises(ValueError, match=r"'offsets' parameter of select.*n_b = 24"):
        ga.select(F, mask=mask, offsets=np.array([0, I64 - 20], dtype=np.int64))


def test_offsets_at_the_int64_limit_are_exact():
    F, _, _, _ = _data()
    off = np.array([0, I64 - 24], dtype=np.uint64)  # the largest legal offset, given in uint64
    idx = np.asarray(ga.select(F, offsets=off))
    ref = np.asarray(ga.select(F, offsets=[0, 0]))
    assert idx.dtype == np.int64 and (idx >= 0).all()
    half = len(ref) // 2
    assert_array_equal(idx[half:] - (I64 - 24), ref[half:])
    assert idx.max() <= I64


# --- 6. dtypes: float16 upcast to float32, longdouble refused -------------------------------------------------------

@pytest.mark.skipif(not EXTENDED, reason="numpy.longdouble is float64 on this platform")
@pytest.mark.parametrize("where", ["V", "features", "grads", "grads[1]", "grads.residuals", "grads.embeddings",
                                   "X"])
def test_longdouble_refused_naming_the_argument(where):
    F, G, E, H = _data()
    ld = np.longdouble
    if where == "V":
        call = lambda: ga.maxvol(readonly(F[0].astype(ld)), 3)  # noqa: E731
    elif where == "features":
        call = lambda: ga.select(readonly(F.astype(ld)))  # noqa: E731
    elif where == "grads":
        call = lambda: ga.select(F, readonly(G.astype(ld)))  # noqa: E731
    elif where == "grads[1]":
        call = lambda: ga.select(list(F), [G[0], G[1].astype(ld)])  # noqa: E731
    elif where == "grads.residuals":
        call = lambda: ga.select(F, LastLayerGrads(E.astype(ld), H))  # noqa: E731
    elif where == "grads.embeddings":
        call = lambda: ga.select(None, LastLayerGrads(E, H.astype(ld)))  # noqa: E731
    else:
        from graft_array.adapters.numpy import select_dataset

        call = lambda: select_dataset(F[0].astype(ld), progress=False)  # noqa: E731
    name = where.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(ValueError, match=rf"'{name}' with dtype float16, float32 or float64.*astype\(numpy.float64\)"):
        call()


def test_float16_gradients_are_upcast_to_float32():
    F, G, E, H = _data()
    up = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731
    h = lambda a: readonly(a.astype(np.float16))  # noqa: E731
    _same(ga.select(F, h(G), random_state=0, return_info=True),
          ga.select(F, up(G), random_state=0, return_info=True))
    _same(ga.select(F, LastLayerGrads(h(E), h(H)), random_state=0, return_info=True),
          ga.select(F, LastLayerGrads(up(E), up(H)), random_state=0, return_info=True))
    _same(ga.select(list(F), [h(g) for g in G], random_state=0, return_info=True),
          ga.select(list(F), [up(g) for g in G], random_state=0, return_info=True))
    _same(ga.select(None, LastLayerGrads(h(E), h(H)), random_state=0, return_info=True),
          ga.select(None, LastLayerGrads(up(E), up(H)), random_state=0, return_info=True))
    _same(ga.select(h(F), h(G), random_state=0, return_info=True),
          ga.select(up(F), up(G), random_state=0, return_info=True))
    assert_array_equal(ga.maxvol(h(F), 4), ga.maxvol(up(F), 4))


# --- 7. non-native byte order: a native copy, the native rows --------------------------------------------------------

@pytest.mark.parametrize("dt", ["f8", "f4"])
def test_big_endian_gives_the_native_rows(dt):
    F, G, E, H = (a.astype(dt) for a in _data())
    swap = lambda a: readonly(a.astype(">" + dt if np.little_endian else "<" + dt))  # noqa: E731
    for method in ("deim", "volume", "tournament"):
        assert_array_equal(ga.maxvol(swap(F[0]), 6, method=method), ga.maxvol(F[0], 6, method=method))
    assert_array_equal(ga.maxvol(swap(F), 6), ga.maxvol(F, 6))
    _same(ga.select(swap(F), swap(G), random_state=0, return_info=True),
          ga.select(F, G, random_state=0, return_info=True))
    _same(ga.select(swap(F), LastLayerGrads(swap(E), swap(H)), random_state=0, return_info=True),
          ga.select(F, LastLayerGrads(E, H), random_state=0, return_info=True))
    _same(ga.select([swap(f) for f in F], [swap(g) for g in G], random_state=0, return_info=True),
          ga.select(list(F), list(G), random_state=0, return_info=True))
    _same(ga.select(None, swap(G), random_state=0, return_info=True),
          ga.select(None, G, random_state=0, return_info=True))


# --- 8. masked padding: NaN in masked-out grad rows is padding, like in feature rows --------------------------------

def test_nan_in_masked_out_grad_rows_is_ignored():
    F, G, E, H = _data()
    mask = np.ones((2, 24), bool)
    mask[0, 20:] = mask[1, ::3] = False
    Gn, En, Hn, Fn = G.copy(), E.copy(), H.copy(), F.copy()
    for a in (Gn, En, Hn, Fn):
        a[~mask] = np.nan
    ref = ga.select(F, G, mask=mask, random_state=0, return_info=True)
    _same(ga.select(readonly(Fn), readonly(Gn), mask=mask, random_state=0, return_info=True), ref)
    ref = ga.select(F, LastLayerGrads(E, H), mask=mask, random_state=0, return_info=True)
    _same(ga.select(Fn, LastLayerGrads(readonly(En), readonly(Hn)), mask=mask, random_state=0, return_info=True), ref)
    _same(ga.select(Fn[1], LastLayerGrads(En[1], Hn[1]), mask=mask[1], random_state=0, return_info=True),
          ga.select(F[1], LastLayerGrads(E[1], H[1]), mask=mask[1], random_state=0, return_info=True))
    Gn[0, 3, 1] = np.inf  # a kept row: still refused
    with pytest.raises(ValueError, match=r"'grads' to contain only finite values"):
        ga.select(F, Gn, mask=mask)
    En[1, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"'grads.residuals' to contain only finite values"):
        ga.select(F, LastLayerGrads(En, Hn), mask=mask)


# --- 10. messages that name the argument ------------------------------------------------------------------------------

@pytest.mark.parametrize("value,exc", [(-1, ValueError), (np.int64(-5), ValueError), (True, TypeError),
                                       (1.5, TypeError), (np.random.RandomState(0), TypeError)])
def test_random_state_of_select(value, exc):
    F, _, _, _ = _data()
    with pytest.raises(exc, match=r"^The 'random_state' parameter of select must be None, a non-negative int or a "
                                  rf"numpy Generator\. Got {__import__('re').escape(repr(value))} instead\.$"):
        ga.select(F, random_state=value)


def test_random_state_of_the_adapters():
    F, _, _, _ = _data()
    from graft_array.adapters.numpy import select_dataset

    with pytest.raises(ValueError, match=r"^The 'random_state' parameter of select_dataset must be None, a "
                                         r"non-negative int or a numpy Generator\. Got -1 instead\.$"):
        select_dataset(F[0], random_state=-1, progress=False)
    pytest.importorskip("sklearn")
    from graft_array.adapters.sklearn import GraftSampler

    with pytest.raises(ValueError, match=r"^The 'random_state' parameter of GraftSampler must be None, a "
                                         r"non-negative int, a numpy RandomState or a numpy Generator\. Got -3"):
        GraftSampler(random_state=-3).fit(F[0])


def test_random_state_of_the_torch_adapter():
    torch = pytest.importorskip("torch")
    from graft_array.adapters.torch import GraftBatchSelector

    with pytest.raises(ValueError, match=r"^The 'random_state' parameter of GraftBatchSelector must be None, a "
                                         r"non-negative int or a numpy Generator\. Got -1 instead\.$"):
        GraftBatchSelector(torch.nn.Linear(3, 2), random_state=-1)


def test_torch_meta_and_sparse_tensors_refused():
    torch = pytest.importorskip("torch")
    F, G, _, _ = _data()
    with pytest.raises(ValueError, match=r"expects 'V' with data; got a tensor on the 'meta' device"):
        ga.maxvol(torch.empty(20, 4, device="meta"), 3)
    with pytest.raises(ValueError, match=r"expects 'features' with data.*'meta'"):
        ga.select(torch.empty(2, 20, 4, device="meta"))
    with pytest.raises(TypeError, match=r"expects 'V' to be a dense tensor.*sparse_coo.*V.to_dense\(\)"):
        ga.maxvol(torch.tensor(F[0]).to_sparse(), 3)
    with pytest.raises(TypeError, match=r"expects 'grads' to be a dense tensor.*sparse_coo"):
        ga.select(torch.tensor(F), torch.tensor(G).to_sparse())


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_torch_sparse_csr_refused():
    torch = pytest.importorskip("torch")
    F, _, _, _ = _data()
    with pytest.raises(TypeError, match=r"expects 'V' to be a dense tensor.*sparse_csr"):
        ga.maxvol(torch.tensor(F[0]).to_sparse_csr(), 3)
    with pytest.raises(TypeError, match=r"expects 'features\[0\]' to be a dense tensor.*sparse_csr"):
        ga.select([torch.tensor(F[0]).to_sparse_csr()])


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_exotic_numpy_inputs():
    F, G, _, _ = _data()
    masked = np.ma.masked_array(F[0], mask=F[0] > 1)
    with pytest.raises(TypeError, match=r"expects 'V' to be a plain array.*masked array.*numpy.ma.getdata\(V\)"):
        ga.maxvol(masked, 3)
    with pytest.raises(TypeError, match=r"expects 'grads' to be a plain array.*masked array"):
        ga.select(F, np.ma.masked_array(G))
    from graft_array.adapters.numpy import select_dataset

    with pytest.raises(TypeError, match=r"select_dataset expects 'X' without a mask"):
        select_dataset(masked, progress=False)
    with pytest.raises(TypeError, match=r"expects 'V' to be an array"):
        ga.maxvol(np.asmatrix(F[0]), 3)
    for dt in (object, np.complex128, np.int64, np.bool_):
        with pytest.raises(ValueError, match=r"expects 'V' with a real floating dtype"):
            ga.maxvol(F[0].astype(dt), 3)
        with pytest.raises(ValueError, match=r"expects 'grads' with a real floating dtype"):
            ga.select(F, G.astype(dt))
    with pytest.raises(ValueError, match=r"expects 'V' with at least 1 row"):
        ga.maxvol(np.zeros((0, 4)), 1)
    with pytest.raises(ValueError, match=r"expects 'features' with at least 1 row"):
        ga.select(np.zeros((2, 0, 4)))
    # strided and negative-stride views work and give the rows of their contiguous copy
    for v in (F[0][::-1], F[0][::2], np.asfortranarray(F[0]), F[0][:, ::-1]):
        v.flags.writeable = False
        assert_array_equal(ga.maxvol(v, 5), ga.maxvol(np.ascontiguousarray(v), 5))
    assert_array_equal(ga.select(F[:, ::-1], G[:, ::-1], random_state=0), ga.select(
        np.ascontiguousarray(F[:, ::-1]), np.ascontiguousarray(G[:, ::-1]), random_state=0))


def test_torch_views_and_requires_grad():
    torch = pytest.importorskip("torch")
    F, G, E, H = _data()
    ref = ga.maxvol(F[0], 5)
    t = torch.tensor(F[0], requires_grad=True)
    assert_array_equal(ga.maxvol(t, 5).numpy(), ref)
    assert t.grad is None and t.requires_grad
    assert_array_equal(ga.maxvol(torch.tensor(F[0]).conj(), 5).numpy(), ref)
    assert_array_equal(ga.maxvol(-torch.tensor(-F[0])._neg_view(), 5).numpy(), ref)
    assert_array_equal(ga.maxvol(torch.tensor(F[0]).T.contiguous().T, 5).numpy(), ref)
    s = ga.select(torch.tensor(F, requires_grad=True), LastLayerGrads(torch.tensor(E, requires_grad=True),
                                                                      torch.tensor(H)), random_state=0)
    assert_array_equal(s.numpy(), np.asarray(ga.select(F, LastLayerGrads(E, H), random_state=0)))
    for half in (torch.float16, torch.bfloat16):
        up = torch.tensor(F).to(half)
        assert_array_equal(ga.maxvol(up, 5).numpy(), ga.maxvol(up.float(), 5).numpy())
        a = ga.select(up, LastLayerGrads(torch.tensor(E).to(half), torch.tensor(H).to(half)), random_state=0,
                      return_info=True)
        b = ga.select(up.float(), LastLayerGrads(torch.tensor(E).to(half).float(), torch.tensor(H).to(half).float()),
                      random_state=0, return_info=True)
        _same(a, b)


# --- property: layout, byte order and half precision never change the rows, inputs never change ----------------------

def _layout(a, layout):
    """An array equal to ``a`` in another memory layout, read-only."""
    if layout == "fortran":
        out = np.asfortranarray(a)
    elif layout == "reversed":  # negative strides on the rows
        out = a[:, ::-1].copy()[:, ::-1]
    elif layout == "strided":  # every other row of a larger buffer
        buf = np.zeros(a.shape[:1] + (2 * a.shape[1],) + a.shape[2:], dtype=a.dtype)
        buf[:, ::2] = a
        out = buf[:, ::2]
    else:
        out = a.copy()
    out.flags.writeable = False
    return out


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(["f2", "f4", "f8"]), swap=st.booleans(),
       layout=st.sampled_from(["C", "fortran", "reversed", "strided"]), last_layer=st.booleans())
def test_layout_byteorder_and_half_give_the_native_rows(seed, dtype, swap, layout, last_layer):
    F, G, E, H = (a.astype(dtype) for a in _data(seed))
    order = (">" if np.little_endian else "<") if swap else "="
    odd = [_layout(a.astype(order + dtype), layout) for a in (F, G, E, H)]
    before = [a.copy() for a in odd]
    native = np.float32 if dtype == "f2" else np.dtype(dtype).type  # what the kernels see: the same values
    Fn, Gn, En, Hn = (a.astype(native) for a in (F, G, E, H))
    assert_array_equal(ga.maxvol(odd[0], 6), ga.maxvol(Fn, 6))
    grads = LastLayerGrads(odd[2], odd[3]) if last_layer else odd[1]
    ref = LastLayerGrads(En, Hn) if last_layer else Gn
    _same(ga.select(odd[0], grads, random_state=seed, return_info=True),
          ga.select(Fn, ref, random_state=seed, return_info=True))
    for a, b in zip(odd, before):
        assert a.dtype == b.dtype and not a.flags.writeable
        assert_array_equal(a, b)
