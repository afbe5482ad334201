"""``strategy="graft"``: GRAFT on one stack of batches (the low rank, MaxVol, the size criterion, the weights).

:func:`run_numba` (NumPy in and out: the low-rank step in threads over chunks of
batches, the rest in parallel Numba kernels) and :func:`run_generic` (any
array-API namespace, on the arrays' own device) return the pivots, the
criterion's sizes, the residual curves, each batch's gradient norm (for
:func:`graft_array.select`'s call budget) and a function that fits the weights
once the final sizes are known. The kernels themselves live in
:mod:`graft_array._numba` and :mod:`graft_array._agnostic` (maxvol, lowrank,
criterion), shared with :func:`graft_array.maxvol`.
"""

import numpy as np

from .._agnostic.criterion import _host
from .._backends import kernel
from .._common import unit_exponents
from .._namespace import array_namespace, device_of

__all__ = ["run", "run_numba", "run_generic"]


#: features whose largest |entry| is within 2^-e .. 2^e (e by dtype) go to the low-rank step as they are (no
#: copy): no Gram, product with the test matrix or Cholesky QR of theirs (up to fourth powers of the entries,
#: in the features' precision for the randomized solver) overflows, and every tolerance there is homogeneous,
#: so features scaled by 2^j select as the batch scaled to [1/2, 1) does (the same bits, unless products of
#: entries far below the batch max reach subnormal numbers in one and not in the other). Others are scaled.
_SAFE_FEATURE_EXP = {np.dtype(np.float32): 16, np.dtype(np.float64): 128}


def _unit_features(xp, F, amax, split):
    """F (B, n, d) with each batch scaled by the power of two bringing its max |entry| into [1/2, 1), exactly.

    ``amax`` (NumPy (B,)): each batch's max |entry| (of the first ``split``
    columns, the residuals E of [E | H], when ``split`` is given: the gradients
    e_i (x) [h_i; 1] scale with E). The exponents are
    :func:`graft_array._common.unit_exponents` for F's dtype (clamped so that
    2^k is a normal number of it). The top-r left singular vectors, and so the
    selection, do not change. F comes back as it is (no copy) when every batch
    is within 2^+-_SAFE_FEATURE_EXP (or zero). Raises :class:`NonFiniteFeatures`
    when some batch's ``amax`` is not finite (the pass that found it saw a NaN
    or an infinity among those columns).
    """
    from .._agnostic.lowrank import NonFiniteFeatures

    if not np.all(np.isfinite(amax)):
        raise NonFiniteFeatures()
    dt = np.dtype(np.float32 if xp.finfo(F.dtype).bits == 32 else np.float64)
    k = unit_exponents(amax, dt)
    if np.all((amax == 0) | (np.abs(k) <= _SAFE_FEATURE_EXP[dt])):
        return F
    factor = xp.asarray(np.ldexp(np.ones(k.shape, dtype=dt), k), dtype=F.dtype, device=device_of(F))[:, None, None]
    if split is None:
        return F * factor
    return xp.concat([F[..., :split] * factor, F[..., split:]], axis=-1)


def run_numba(F, grads, grads_kind, r, hi, lo, opts, solver, seed, name):
    """NumPy in, NumPy out: low rank in threads over chunks of batches, the rest in parallel Numba kernels."""
    from .._agnostic.lowrank import lowrank
    from .._numba import criterion as ncrit
    from .._numba.checks import batch_abs_max
    from .._numba.lowrank import batch_gram, gram_ritz
    from .._numba.maxvol import run_maxvol
    from .._parallel import map_batches

    nb, n, _ = F.shape  # already float32 / float64 (as_kernel_dtype at the entry)
    split = opts["split"]
    amax = np.empty(nb)  # each batch's max |entry| (of E for [E | H]), filled by the chunks through views

    def chunk(Fc, amax_c):
        amax_c[:] = batch_abs_max(Fc, split)
        Fc = _unit_features(np, Fc, amax_c, split)
        rng = np.random.default_rng(seed)
        return lowrank(Fc, r, solver=solver, xp=np, rng=rng, gram=batch_gram, ritz=gram_ritz, check_finite=True,
                       split=split)[0]

    V = np.ascontiguousarray(map_batches(chunk, F, amax))
    pivots, _, _, _ = run_maxvol(V, hi, method=opts["method"], tile_rows=None, refine=False, tol=1.05, max_iters=0)
    if grads_kind is None:
        sizes = np.full(nb, hi, dtype=np.int64)
        return pivots, sizes, np.full((nb, hi), np.nan), None, lambda _sizes: np.full((nb, hi), n / hi)
    parts = tuple(np.ascontiguousarray(g) for g in grads)
    # features=None: the features are the gradients (or [E | H]), so amax is max |G_b| (max |E_b|) already
    gmax = amax if opts["source"] == "grads" else batch_abs_max(parts[0])
    if grads_kind == "plain":
        K, bv, gg = ncrit.gram_plain(parts[0], pivots, gmax)
    else:
        K, bv, gg = ncrit.gram_last_layer(parts[0], parts[1], pivots, gmax)
    residuals, _ = ncrit.rho_curve(K, bv, gg)
    sizes = _sizes(np, residuals, lo, hi, opts["tol"])

    def fit(sizes):
        W = ncrit.nnls_batched(K, bv, np.ascontiguousarray(sizes, dtype=np.int64), n, opts["weight_reg"])
        return _scale_weights(np, W, sizes, n)

    return pivots, sizes, residuals, (np.sqrt(gg), unit_exponents(gmax, np.float64)), fit


def run_generic(F, grads, grads_kind, r, hi, lo, opts, solver, seed, name):
    """Any array-API namespace, on the arrays' own device."""
    from .._agnostic import criterion
    from .._agnostic.lowrank import lowrank

    xp = array_namespace(F)
    dev = device_of(F)
    nb, n, _ = F.shape  # already float32 / float64 (as_kernel_dtype at the entry)
    amax = criterion.batch_abs_max(xp, F, opts["split"])  # of E for [E | H]
    F = _unit_features(xp, F, amax, opts["split"])
    V, _, _ = lowrank(F, r, solver=solver, xp=xp, rng=np.random.default_rng(seed), check_finite=True,
                      split=opts["split"])
    run = kernel("maxvol", name)
    plist, _, _, _ = run(V, hi, xp=xp, device=dev, method=opts["method"], tile_rows=None, refine=False, tol=1.05,
                         max_iters=0)
    pivots = xp.asarray(plist, dtype=xp.int64, device=dev)
    if grads_kind is None:
        sizes = xp.full((nb,), hi, dtype=xp.int64, device=dev)
        nan = xp.full((nb, hi), float("nan"), dtype=xp.float64, device=dev)
        return pivots, sizes, nan, None, lambda _sizes: xp.full((nb, hi), n / hi, dtype=xp.float64, device=dev)
    # features=None: the same max |G_b| (max |E_b|)
    gmax = amax if opts["source"] == "grads" else criterion.batch_abs_max(xp, grads[0])
    if grads_kind == "plain":
        K, bv, gg = criterion.gram_plain(xp, grads[0], pivots, gmax)
    else:
        K, bv, gg = criterion.gram_last_layer(xp, grads[0], grads[1], pivots, gmax)
    from .._cuda.criterion import rho_curve_on

    residuals = rho_curve_on(name, xp, K, bv, gg)
    sizes = _sizes(xp, residuals, lo, hi, opts["tol"])

    def fit(sizes):
        sz = xp.asarray(np.asarray(sizes, dtype=np.int64), device=dev)
        if name == "cuda":
            from .._cuda import nnls as cnnls

            if cnnls.fits(K.shape[1]):  # the weights kernel: one launch for every batch
                return _scale_weights(xp, cnnls.nnls_weights_like(K, bv, sz, n, opts["weight_reg"]), sz, n)
        rows = []
        for b in range(nb):  # Lawson-Hanson is sequential per batch; the generic twin loops
            m = int(sizes[b])
            w = criterion.nnls_gram(xp, *criterion.weight_system(xp, K[b, :m, :m], bv[b, :m], n, opts["weight_reg"]))
            rows.append(xp.concat([w, xp.zeros((hi - m,), dtype=xp.float64, device=dev)]))
        return _scale_weights(xp, xp.stack(rows), sz, n)

    return pivots, sizes, residuals, (np.sqrt(_host(gg)), unit_exponents(gmax, np.float64)), fit


def _sizes(xp, residuals, lo, hi, tol):
    """Smallest m in [lo, hi] with rho(m) <= tol, else hi; (B,) int64."""
    ok = xp.astype(residuals[:, lo - 1:hi] <= tol, xp.int32)
    first = xp.astype(xp.argmax(ok, axis=1), xp.int64)
    hit = xp.max(ok, axis=1) > 0
    return xp.where(hit, first + lo, xp.full_like(first, hi))


def _scale_weights(xp, W, sizes, n):
    """Rescale each batch's weights (B, hi) to sum to n; uniform n / m where the fit is all zero."""
    total = xp.sum(W, axis=1)
    m = xp.astype(sizes, xp.float64)
    uniform = xp.astype(xp.arange(W.shape[1], device=device_of(W))[None, :] < sizes[:, None], xp.float64)
    safe = xp.where(total > 0, total, xp.ones_like(total))
    return xp.where((total > 0)[:, None], W * (n / safe)[:, None], uniform * (n / m)[:, None])


def run(F, grads, grads_kind, r, hi, lo, opts, solver, seed, name):
    """GRAFT on every batch of F (B, n, d): (pivots, criterion sizes, residuals, gradient norms, fit)."""
    return (run_numba if name == "numba" else run_generic)(F, grads, grads_kind, r, hi, lo, opts, solver, seed, name)
