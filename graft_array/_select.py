"""The public :func:`select`: GRAFT's per-batch selection, many batches per call."""

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ._backends import kernel, resolve
from ._common import METHODS
from ._exceptions import GradientRankWarning
from ._namespace import array_namespace, describe, device_of, from_numpy_like, is_array, to_numpy_view
from ._validation import check_array, check_bool, check_int, check_option, check_real, nonfinite_error

__all__ = ["select", "Selection", "LastLayerGrads"]

_FUNC = "select"
SOLVERS = ("auto", "exact", "randomized")


class LastLayerGrads(NamedTuple):
    """Per-sample last-layer gradients in factorised form: g_i = e_i (x) [h_i; 1].

    ``residuals`` (n, C) are e_i = dloss_i/dlogits (p_i - y_i for softmax
    cross-entropy), ``embeddings`` (n, h) the penultimate activations h_i feeding
    the last linear layer. Their gradients' inner products are
    <e_i, e_j>(<h_i, h_j> + 1); the C * (h + 1) vectors are never formed.
    """

    residuals: Any
    embeddings: Any


@dataclass(frozen=True)
class Selection:
    """What :func:`select` chose, with the evidence.

    Attributes
    ----------
    indices : int64 array (n_selected,)
        Selected rows, batch after batch, each batch in selection order: flat row
        numbers ``b * n + i`` (or ``offsets[b] + i`` when offsets are given).
    weights : float64 array (n_selected,)
        Non-negative weights aligned with ``indices``; within a batch they sum to
        the batch's number of rows, so ``sum_j w_j loss_j / n_b`` estimates the
        batch's mean loss (see :func:`select`).
    sizes : int64 array (batch,)
        Number of rows chosen in each batch.
    residuals : float64 array (batch, max_size)
        rho(m) for m = 1..max_size along each batch's pivot order (NaN where not
        computed, e.g. ``grads=None``).
    backend : str
        What ran the MaxVol step ("numba", "array_api" or "cuda").
    solver : str
        The low-rank solver used ("exact" or "randomized").
    rank : int
        Number of singular directions used (r).
    """

    indices: Any
    weights: Any
    sizes: Any
    residuals: Any
    backend: str
    solver: str
    rank: int


def select(
    features,
    grads=None,
    *,
    fraction=0.25,
    rank=None,
    method="deim",
    tol=0.1,
    band=0.5,
    min_size=None,
    max_size=None,
    solver="auto",
    offsets=None,
    return_info=False,
    random_state=None,
    backend="auto",
):
    """GRAFT selection: diverse rows by MaxVol, subset size by a gradient criterion.

    For each batch of n samples:

    1. V (n, r) = the top-r left singular vectors of the batch's features
       (``solver``: exact eigendecomposition of the batch Gram, or a randomised
       range finder when r << min(n, d)).
    2. A MaxVol pivot order on V (:func:`maxvol` with ``method``), up to
       ``max_size`` rows (k > r uses the rectangular extension).
    3. With ``grads``: rho(m) = ||g - P_m g|| / ||g|| for every m, where g is the
       batch gradient and P_m projects onto the span of the first m pivots'
       gradients (all m from one incremental Cholesky factorisation); the size is
       the smallest m in [min_size, max_size] with rho(m) <= ``tol``, else
       max_size. Without grads: ``round(fraction * n)`` rows.
    4. Weights: non-negative least squares sum_j w_j g_sj ~ g, rescaled to sum to
       n (uniform n / m without grads or when the fit is all zero).

    Parameters
    ----------
    features : array (n, d) or (batch, n, d), real floating
    grads : None, array (n, p) / (batch, n, p), or :class:`LastLayerGrads`
    fraction : float in (0, 1], default=0.25
        Target share of each batch; the centre of the size band.
    rank : int or None
        r, the number of singular directions; default max_size (capped by
        min(n, d)).
    method : {"deim", "volume", "tournament"}, default="deim"
    tol : float in [0, 1], default=0.1
        Residual tolerance of the size criterion.
    band : float in [0, 1), default=0.5
        Sizes searched: round((1 - band) * fraction * n) .. round((1 + band) * fraction * n),
        unless ``min_size`` / ``max_size`` are given.
    solver : {"auto", "exact", "randomized"}
        "auto": randomized when 4 r <= min(n, d), else exact. Recorded in the result.
    offsets : None or int array (batch,)
        Dataset position of each batch's row 0: indices become ``offsets[b] + i``.
    return_info : bool
        Return a :class:`Selection` instead of the indices alone.
    random_state : None, int or numpy.random.Generator
        Seeds the randomized solver only; no global RNG is touched.
    backend : {"auto", "numba", "array_api", "cuda"}

    Returns
    -------
    indices : int64 array, or :class:`Selection` when ``return_info``.
    """
    xp = check_array(features, "features", _FUNC, ndims=(2, 3), shape_doc="(n, d) or (batch, n, d)")
    batched = features.ndim == 3
    nb = features.shape[0] if batched else 1
    n, d = features.shape[-2], features.shape[-1]
    fraction = check_real(fraction, "fraction", _FUNC, low=0.0, high=1.0, low_inclusive=False)
    tol = check_real(tol, "tol", _FUNC, low=0.0, high=1.0)
    band = check_real(band, "band", _FUNC, low=0.0, high=0.999)
    method = check_option(method, "method", _FUNC, METHODS)
    solver = check_option(solver, "solver", _FUNC, SOLVERS)
    return_info = check_bool(return_info, "return_info", _FUNC)
    rng = _check_random_state(random_state)

    centre = fraction * n
    if grads is None:
        lo = hi = min(n, max(1, int(round(centre))))
    else:
        lo = min(n, max(1, int(math.floor((1.0 - band) * centre))))
        hi = min(n, max(1, int(math.ceil((1.0 + band) * centre))))
    min_size = check_int(min_size, "min_size", _FUNC, low=1, high=n, allow_none=True)
    max_size = check_int(max_size, "max_size", _FUNC, low=1, high=n, allow_none=True)
    lo = lo if min_size is None else min_size
    hi = hi if max_size is None else max_size
    if min_size is not None and max_size is None:
        hi = max(hi, lo)
    if max_size is not None and min_size is None:
        lo = min(lo, hi)
    if lo > hi:
        raise ValueError(
            f"The 'min_size' parameter of select must be <= 'max_size'. Got min_size={lo}, max_size={hi} instead."
        )
    r = check_int(rank, "rank", _FUNC, low=1, allow_none=True)
    r = min(hi if r is None else r, n, d)

    grads_kind, grads = _check_grads(grads, features, xp, nb, n, batched)
    if offsets is not None:
        offsets = _check_offsets(offsets, nb)

    name = resolve(features, backend, _FUNC)
    F = features if batched else xp.expand_dims(features, axis=0)
    if not bool(xp.all(xp.isfinite(F))):
        raise nonfinite_error("features", _FUNC, features)
    if name == "numba":
        F = to_numpy_view(F)
        cxp = array_namespace(F)
        grads = tuple(to_numpy_view(g) for g in grads)
    else:
        cxp = xp
    if F.dtype == getattr(cxp, "float16", None):
        F = cxp.astype(F, cxp.float32)

    from ._agnostic.lowrank import choose_solver, lowrank

    used_solver = choose_solver(n, d, r) if solver == "auto" else solver
    omega = None
    if used_solver == "randomized":
        ell = min(d, r + max(8, r // 4))
        omega = rng.standard_normal((d, ell))
    V, _, _ = lowrank(F, r, solver=used_solver, xp=cxp, omega=omega)

    run = kernel("maxvol", name)
    opts = dict(method=method, tile_rows=None, refine=False, tol=1.05, max_iters=0)
    if name == "numba":
        pivots, _, _, _ = run(np.ascontiguousarray(V), hi, **opts)
        pivots = cxp.asarray(pivots)
    else:
        plist, _, _, _ = run(V, hi, xp=cxp, device=device_of(V), **opts)
        pivots = cxp.asarray(plist, dtype=cxp.int64, device=device_of(V))

    from ._agnostic import criterion

    if grads_kind is None:
        sizes = [hi] * nb
        residuals = cxp.full((nb, hi), float("nan"), dtype=cxp.float64, device=device_of(V))
        weights = [cxp.full((hi,), n / hi, dtype=cxp.float64, device=device_of(V)) for _ in range(nb)]
    else:
        if grads_kind == "plain":
            Kg, bg, gg = criterion.gram_plain(cxp, grads[0], pivots)
            if grads[0].shape[-1] < hi:
                warnings.warn(
                    f"select: the per-sample gradients have {grads[0].shape[-1]} column(s) < max_size={hi}, so "
                    "their span caps the size criterion (any subset spanning them reproduces the batch gradient). "
                    "Pass richer gradients, e.g. LastLayerGrads(residuals, embeddings).",
                    GradientRankWarning,
                    stacklevel=2,
                )
        else:
            Kg, bg, gg = criterion.gram_last_layer(cxp, grads[0], grads[1], pivots)
        if name == "numba":
            from ._numba import criterion as ncrit

            Kg, bg, gg = (np.ascontiguousarray(a) for a in (Kg, bg, gg))
            residuals, _ = ncrit.rho_curve(Kg, bg, gg)
        else:
            residuals, _ = criterion.rho_curve(cxp, Kg, bg, gg)
        ok = cxp.astype(residuals[:, lo - 1:hi] <= tol, cxp.int32)
        first = cxp.argmax(ok, axis=1)  # first size in the band that meets tol
        hit = cxp.max(ok, axis=1) > 0
        sizes_arr = cxp.where(hit, first + lo, cxp.full_like(first, hi))
        sizes = [int(sizes_arr[b]) for b in range(nb)]
        if name == "numba":
            W = ncrit.nnls_batched(Kg, bg, np.asarray(sizes, dtype=np.int64))
            raw = [W[b, : sizes[b]] for b in range(nb)]
        else:
            raw = [criterion.nnls_gram(cxp, Kg[b, : sizes[b], : sizes[b]], bg[b, : sizes[b]]) for b in range(nb)]
        weights = []
        for b, w in enumerate(raw):
            m = sizes[b]
            total = float(cxp.sum(w))
            weights.append(
                w * (n / total) if total > 0 else cxp.full((m,), n / m, dtype=cxp.float64, device=device_of(V))
            )

    base = [(b * n if offsets is None else int(offsets[b])) for b in range(nb)]
    idx = cxp.concat([pivots[b, : sizes[b]] + base[b] for b in range(nb)])
    wts = cxp.concat(weights)
    sizes_arr = cxp.asarray(sizes, dtype=cxp.int64, device=device_of(V))
    if name == "numba":
        idx, wts, sizes_arr, residuals = (
            from_numpy_like(np.asarray(a), features) for a in (idx, wts, sizes_arr, residuals)
        )
    if not return_info:
        return idx
    return Selection(idx, wts, sizes_arr, residuals, name, used_solver, r)


def _check_random_state(random_state):
    if random_state is None or isinstance(random_state, (numbers.Integral, np.random.Generator)):
        if isinstance(random_state, bool):
            raise TypeError(f"The 'random_state' parameter of select must be None, an int or a numpy Generator. Got {random_state!r} instead.")
        return np.random.default_rng(random_state)
    raise TypeError(
        f"The 'random_state' parameter of select must be None, an int or a numpy Generator. Got {random_state!r} instead."
    )


def _check_offsets(offsets, nb):
    off = np.asarray(offsets)
    if off.shape != (nb,) or not np.issubdtype(off.dtype, np.integer):
        raise ValueError(
            f"The 'offsets' parameter of select must be an int array of shape ({nb},) (one per batch). "
            f"Got shape {off.shape}, dtype {off.dtype} instead."
        )
    return off.astype(np.int64)


def _check_grads(grads, features, xp, nb, n, batched):
    if grads is None:
        return None, ()
    if isinstance(grads, LastLayerGrads):
        parts, names, kind = (grads.residuals, grads.embeddings), ("grads.residuals", "grads.embeddings"), "last_layer"
    elif is_array(grads):
        parts, names, kind = (grads,), ("grads",), "plain"
    else:
        raise TypeError(
            f"select expects 'grads' to be None, an array of per-sample gradients or LastLayerGrads(residuals, "
            f"embeddings); got {describe(grads)}."
        )
    want = (nb, n) if batched else (n,)
    for part, nm in zip(parts, names):
        check_array(part, nm, _FUNC, ndims=(features.ndim,), shape_doc="(batch, n, p)" if batched else "(n, p)")
        if tuple(part.shape[:-1]) != want:
            raise ValueError(
                f"select expects '{nm}' to have one row per sample of 'features' (leading shape {want}); "
                f"got {describe(part)} for features of {describe(features)}."
            )
        pxp = array_namespace(part)
        if pxp is not xp and type(part) is not type(features):
            raise TypeError(f"select expects '{nm}' in the same array library as 'features'; got {describe(part)}.")
        if not bool(pxp.all(pxp.isfinite(part))):
            raise nonfinite_error(nm, _FUNC, part)
    parts = tuple(p if batched else xp.expand_dims(p, axis=0) for p in parts)
    return kind, parts
