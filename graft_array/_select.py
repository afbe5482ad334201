"""The public :func:`select`: GRAFT's per-batch selection, many batches per call."""

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ._backends import kernel, resolve
from ._common import METHODS, STRATEGIES, unit_exponents
from ._exceptions import GradientRankWarning
from ._namespace import array_namespace, describe, device_of, from_numpy_like, is_array, to_numpy_view
from ._validation import (
    as_kernel_dtype,
    check_array,
    check_bool,
    check_int,
    check_option,
    check_random_state,
    check_real,
    nonfinite_error,
)

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
        batch's mean loss (see :func:`select`). ``strategy="gradmatch"``: the
        fit's own weights, whose sum is near n_b only where the fit is good.
    sizes : int64 array (batch,)
        Number of rows chosen in each batch.
    residuals : float64 array (batch, max_size)
        rho(m) for m = 1..max_size along each batch's selection order (the pivot
        order for GRAFT; NaN where not computed: ``grads=None``, or beyond a
        short batch's own max_size).
    backend : str
        What ran the selection ("numba", "array_api" or "cuda").
    solver : str
        The low-rank solver used ("exact" or "randomized"; with ragged batches,
        the one of the largest); "none" for the baselines.
    rank : int
        Number of singular directions used (r); with ragged batches, r of the
        largest ones; 0 for the baselines.
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
    strategy="graft",
    fraction=0.25,
    rank=None,
    method="deim",
    tol=0.1,
    band=0.5,
    weight_reg=0.01,
    gradmatch_lambda=0.5,
    min_size=None,
    max_size=None,
    solver="auto",
    mask=None,
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
       batch gradient (the sum of the per-sample gradients) and P_m projects onto
       the span of the first m pivots' gradients (all m from one incremental
       Cholesky factorisation); the size is the smallest m in [min_size, max_size]
       with rho(m) <= ``tol``, else max_size. Without grads: ``round(fraction * n)``
       rows.
    4. Weights w >= 0 (one per chosen row) that sum to n, from the least-squares
       fit sum_j w_j g_sj ~ g: they minimise
       ||sum_j w_j g_sj - g||^2 + weight_reg * s * ||w - n/m||^2 with the sum held
       at n (a penalty 100 s (sum_j w_j - n)^2, then an exact rescale), where s
       is the mean squared norm of the chosen gradients. Training on the subset
       with the loss sum_j w_j loss_sj / n then follows (approximately) the
       gradient of the batch's mean loss, and a constant loss is estimated
       exactly. ``weight_reg`` keeps the fit from piling the whole batch on one
       sample when g is small against the per-sample gradients (late in
       training, where a plain NNLS fit rescaled to sum n did exactly that);
       ``weight_reg=0`` gives the sum-constrained NNLS fit. Uniform n / m
       without grads, or when every chosen gradient is zero. rho(m) in step 3
       is the unconstrained projection residual, so the weighted fit's
       residual is at least rho(m).

    The magnitude of the features or of the gradients does not matter: each
    batch's gradients, and its features when their largest |entry| is far from
    1, are scaled internally by an exact power of two, so no Gram overflows and
    no tolerance depends on the scale. Scaling every gradient by c = 2^j gives
    the same rows and the same bits of the weights and residuals whenever the
    scaled gradients are exact (nothing overflows or turns subnormal); so does
    scaling the features by 2^j, unless some of their entries lie so many
    binary orders of magnitude below their batch's largest (dozens in float32,
    hundreds in float64) that products of them are subnormal at one scale and
    not at the other. Any other
    c > 0 changes the inputs' rounding: the results agree up to rounding, so a
    near-tie between candidate rows (or a rho(m) within rounding of ``tol``) can
    go the other way.

    Every batch is selected independently; all batches go through one compiled
    call per step (Numba: parallel over batches; the low-rank step runs chunks of
    batches in threads with BLAS kept to one thread each).

    Baselines (``strategy``), with the same inputs and outputs, for comparisons:
    each takes exactly ``round(fraction * n)`` rows per batch (at least 1, at
    most n), ignores the features' values (only their batch layout counts) and
    leaves ``rank``, ``method``, ``tol``, ``band``, ``weight_reg`` and ``solver``
    unused (``min_size`` / ``max_size`` raise ValueError); ``Selection.solver``
    is "none" and ``Selection.rank`` 0. ``residuals`` hold rho(m) along each
    baseline's selection order (NaN without grads), so that strategies can be
    compared on the gradient residual they leave.

    * ``"random"``: a uniform random subset, in the order drawn, weights n / m.
      Batch b's generator is a SplitMix64 stream seeded by the call's seed
      (drawn from ``random_state``) and the batch's dataset start position
      (``offsets[b]``, ``b * n``, or its start in the list of ragged batches):
      row i gets the stream's (i+1)-th number, the m smallest win. The result
      does not depend on how batches are grouped into calls. ``grads`` optional.
    * ``"craig"`` (Mirzasoleiman, Bilmes, Leskovec, ICML 2020), per batch: the
      gradient distances d_ij = ||g_i - g_j|| (from the batch's n x n gradient
      Gram, for LastLayerGrads <e_i, e_j>(<h_i, h_j> + 1)), similarities
      s_ij = dmax - d_ij (dmax: the batch's largest distance), and the facility
      location F(S) = sum_i max_{j in S} s_ij maximised by the lazy greedy
      (ties to the lowest index: exactly the plain greedy's rows), in greedy
      order. Weight of j: the number of the batch's rows whose most similar
      selected row is j (ties to the earliest selected): positive integers
      summing to n (0 only for a row that duplicates an earlier selected one).
      Needs ``grads``; memory n x n per batch being selected.
    * ``"gradmatch"`` (Killamsetty et al., ICML 2021, the OMP variant), per
      batch: orthogonal matching pursuit of the batch gradient g = sum_i g_i.
      Each step adds the unselected row with the largest <g_j, r>,
      r = g - sum_{j in S} w_j g_j (ties to the lowest index), then refits
      w >= 0 on S minimising ||sum_j w_j g_j - g||^2 + gradmatch_lambda * s *
      ||w||^2 (s: the batch's mean squared per-sample gradient norm; Gram-space
      NNLS). When no unselected row correlates positively with r before the
      budget is reached, the rest of the budget takes the largest remaining
      correlations with weight 0 (a batch whose gradient is 0 gets all weights
      0). The weights are GradMatch's own fit of g, not rescaled: the loss
      sum_j w_j loss_j / n estimates the gradient of the batch's mean loss, and
      their sum is near n only where the fit is good. Needs ``grads``; memory
      n x n per batch being selected.

    With ``features=None`` the low-rank step runs on the per-sample gradients
    themselves: V spans the dominant directions of the batch's gradients (for
    :class:`LastLayerGrads` from their Gram <e_i, e_j>(<h_i, h_j> + 1), never
    forming the C (h + 1) columns; its d is C (h + 1)), so MaxVol picks samples
    whose gradients span the batch's gradient space, the space the size
    criterion and the weights work in. It favours samples with large gradients
    (those the model gets wrong); ``benchmarks/bench_training.py`` measures when
    that helps (at the larger fractions) and when it hurts (small fractions).

    Parameters
    ----------
    features : None, array (n, d) or (batch, n, d), real floating; or a list of (n_b, d) arrays
        A list gives ragged batches (e.g. a short last batch). ``None``: select on
        the gradients (``grads`` required; see above).
    grads : None, array (n, p) / (batch, n, p) / list of (n_b, p), or :class:`LastLayerGrads`
        Per-sample gradients, laid out like ``features``. ``None``: features only,
        ``round(fraction * n)`` rows per batch. Required by "craig" and "gradmatch".

        Dtype rule for ``features``, ``grads`` (arrays and lists) and both parts of
        :class:`LastLayerGrads`: float32 and float64 are used as they are;
        float16 (and torch bfloat16) is upcast to float32; extended precision
        (numpy.longdouble, float96 / float128) is refused with a ValueError
        naming the argument (cast it to float64 yourself: it is never narrowed
        silently); a NumPy array in non-native byte order is read through a
        native copy (same result as the native array); a tensor that requires
        grad is detached. NumPy masked arrays (use ``mask``), sparse and meta
        tensors are refused. Inputs are never modified.
    strategy : {"graft", "random", "craig", "gradmatch"}, default="graft"
        GRAFT, or a baseline with the same API (see above).
    fraction : float in (0, 1], default=0.25
        Target share of each batch; the centre of the size band.
    rank : int or None
        r, the number of singular directions; default ``round(fraction * n)``, the
        budget (capped by min(n, d)). Sizes above r extend the pivots by the
        rectangular maxvol rule.
    method : {"deim", "volume", "tournament"}, default="deim"
    tol : float in [0, 1], default=0.1
        Residual tolerance of the size criterion.
    band : float in [0, 1), default=0.5
        Sizes searched: floor((1 - band) * fraction * n) .. ceil((1 + band) * fraction * n),
        unless ``min_size`` / ``max_size`` are given (capped by each batch's n). ``band=0``
        fixes the size at round(fraction * n), the baselines' budget (the gradient
        criterion then only yields the residual curve and the weights).
    weight_reg : float >= 0, default=0.01
        Pull of the weights towards uniform (step 4), relative to the mean squared
        gradient norm of the chosen samples.
    gradmatch_lambda : float >= 0, default=0.5
        Ridge of GradMatch's weight fit, relative to the batch's mean squared
        per-sample gradient norm (``strategy="gradmatch"`` only).
    min_size, max_size : None or int >= 1
        Bounds of the size band (replacing the ``band`` rule on that side); each
        is capped by each batch's n, so one call serves batches of any length.
    solver : {"auto", "exact", "randomized"}
        "auto": randomized when its test matrix of l = r + max(8, r / 4) columns
        is at most half the batch (2 l <= min(n, d)), else exact. Recorded in the result.
    mask : None or bool array (n,) / (batch, n)
        Rows that are samples (True) in a padded ``features`` array; indices refer
        to the padded layout. Another way to give ragged batches. Masked-out rows
        are padding: neither their features nor their gradients are read (they
        may hold NaN).
    offsets : None or int array (batch,)
        Dataset position of each batch's row 0: indices become ``offsets[b] + i``.
        Non-negative, with ``offsets[b] + n`` (n: the padded length of a stacked
        array, n_b for a list of batches) at most 2**63 - 1, so that every index
        fits int64 (checked in the given dtype, before any cast).
        Default: the position in the concatenation of all batches (``b * n + i``
        for a stacked array).
    return_info : bool
        Return a :class:`Selection` instead of the indices alone.
    random_state : None, non-negative int or numpy.random.Generator
        Seeds the randomized solver (and the "random" strategy) only; no global
        RNG is touched. ``None``: fresh entropy (not reproducible).
    backend : {"auto", "numba", "array_api", "cuda"}

    Returns
    -------
    indices : int64 array, or :class:`Selection` when ``return_info``.
    """
    opts = dict(
        fraction=check_real(fraction, "fraction", _FUNC, low=0.0, high=1.0, low_inclusive=False),
        tol=check_real(tol, "tol", _FUNC, low=0.0, high=1.0),
        band=check_real(band, "band", _FUNC, low=0.0, high=0.999),
        weight_reg=check_real(weight_reg, "weight_reg", _FUNC, low=0.0),
        method=check_option(method, "method", _FUNC, METHODS),
        solver=check_option(solver, "solver", _FUNC, SOLVERS),
        rank=check_int(rank, "rank", _FUNC, low=1, allow_none=True),
        strategy=check_option(strategy, "strategy", _FUNC, STRATEGIES),
        gradmatch_lambda=check_real(gradmatch_lambda, "gradmatch_lambda", _FUNC, low=0.0),
    )
    _check_strategy(opts["strategy"], grads, min_size, max_size)
    opts["split"] = None  # features=None with LastLayerGrads: the number of residual columns of [E | H]
    if features is None:
        features, opts["split"] = _gradient_features(grads)
    opts["source"] = "grads" if features is grads or opts["split"] is not None else "features"
    return_info = check_bool(return_info, "return_info", _FUNC)
    rng = check_random_state(random_state, "random_state", _FUNC)
    seed = int(rng.integers(2**63))  # one test matrix for every batch, whatever the chunking
    if isinstance(features, (list, tuple)) or mask is not None:
        return _select_ragged(features, grads, mask, offsets, min_size, max_size, opts, seed, backend, return_info)

    xp = check_array(features, "features", _FUNC, ndims=(2, 3), shape_doc="(n, d) or (batch, n, d)")
    Fk = as_kernel_dtype(features, "features", _FUNC)  # features stays the caller's array (messages, output type)
    batched = features.ndim == 3
    nb = features.shape[0] if batched else 1
    n = features.shape[-2]
    min_size = check_int(min_size, "min_size", _FUNC, low=1, allow_none=True)
    max_size = check_int(max_size, "max_size", _FUNC, low=1, allow_none=True)
    # features=None with plain gradients: the features' max |entry| pass (_unit_features) checks the same array
    # for NaN and infinity (and its result scales the criterion too), so no separate pass here
    on_grads = features is grads and opts["strategy"] == "graft"
    grads_kind, grads = _check_grads(grads, features, xp, nb, n, batched, finite=not on_grads)
    if offsets is not None:
        offsets = _check_offsets(offsets, nb, [n] * nb)
    name = resolve(features, backend, _FUNC)
    F = Fk if batched else xp.expand_dims(Fk, axis=0)
    starts = np.arange(nb, dtype=np.int64) * n if offsets is None else offsets
    res = _run_stack(F, grads, grads_kind, min_size, max_size, opts, seed, name, features, starts)

    cxp = array_namespace(res.pivots)
    dev = device_of(res.pivots)
    if offsets is None:
        base = cxp.arange(nb, dtype=cxp.int64, device=dev) * n
    else:
        base = cxp.asarray(offsets, dtype=cxp.int64, device=dev)
    keep = cxp.arange(res.hi, dtype=cxp.int64, device=dev)[None, :] < res.sizes[:, None]
    idx = (res.pivots + base[:, None])[keep]  # flat, batch after batch, no loop over batches
    wts = res.weights[keep]
    sizes, residuals = res.sizes, res.residuals
    if name == "numba":
        idx, wts, sizes, residuals = (from_numpy_like(np.asarray(a), features) for a in (idx, wts, sizes, residuals))
    if opts["strategy"] == "graft":
        _warn_gradient_rank(grads_kind, grads, res.hi)
    if not return_info:
        return idx
    return Selection(idx, wts, sizes, residuals, name, res.solver, res.rank)


class _StackResult(NamedTuple):
    pivots: Any  # (B, hi) int64, batch-local rows in pivot order
    sizes: Any  # (B,) int64
    residuals: Any  # (B, hi) float64
    weights: Any  # (B, hi) float64, zero beyond sizes[b]
    lo: int
    hi: int
    rank: int
    solver: str


def _feature_width(d, opts):
    """The d the rank and the solver rule see: C (h + 1) for [E | H] (features=None with LastLayerGrads)."""
    split = opts.get("split")
    return d if split is None else split * (d - split + 1)


def _band(n, d, opts, min_size, max_size):
    """(lo, hi, r) for batches of n rows and d features."""
    centre = opts["fraction"] * n
    if opts.get("has_grads") and opts["band"] > 0:
        lo = min(n, max(1, int(math.floor((1.0 - opts["band"]) * centre))))
        hi = min(n, max(1, int(math.ceil((1.0 + opts["band"]) * centre))))
    else:
        lo = hi = min(n, max(1, int(round(centre))))
    lo = lo if min_size is None else min(min_size, n)
    hi = hi if max_size is None else min(max_size, n)
    if min_size is not None and max_size is None:
        hi = max(hi, lo)
    if max_size is not None and min_size is None:
        lo = min(lo, hi)
    if lo > hi:
        raise ValueError(
            f"The 'min_size' parameter of select must be <= 'max_size'. Got min_size={lo}, max_size={hi} instead."
        )
    rank = opts["rank"]
    r = min(max(1, int(round(centre))) if rank is None else rank, n, d)
    return lo, hi, r


def _run_stack(F, grads, grads_kind, min_size, max_size, opts, seed, name, like, starts):
    """Selection of every batch of the stack F (B, n, d) on backend ``name``; results in the compute namespace.

    ``starts`` (B,) int64: each batch's dataset position (seeds the "random" strategy).
    """
    xp = array_namespace(F)
    nb, n, d = F.shape
    graft = opts["strategy"] == "graft"
    d = _feature_width(d, opts)
    lo, hi, r = _band(n, d, dict(opts, has_grads=graft and grads_kind is not None), min_size, max_size)
    if name == "numba":
        from ._parallel import threads_for

        F = to_numpy_view(F)
        grads = tuple(to_numpy_view(g) for g in grads)
        threads = threads_for(nb * n)  # a small call runs on this thread: no wake-up of the others
    else:
        threads = contextlib.nullcontext()
    if not graft:  # the baselines: round(fraction * n) rows, no low-rank step, no solver
        from ._baselines import run_baseline

        with threads:
            pivots, sizes, residuals, weights = run_baseline(F, grads, grads_kind, hi, opts, seed, name, starts)
        return _StackResult(pivots, sizes, residuals, weights, hi, hi, 0, "none")
    from ._agnostic.lowrank import NonFiniteFeatures, choose_solver

    solver = choose_solver(n, d, r) if opts["solver"] == "auto" else opts["solver"]
    run = _select_numba if name == "numba" else _select_generic
    # NonFiniteFeatures: the pass that finds each batch's max |entry| for its scale (_unit_features) sees a NaN
    # or infinity in F, or in its E columns only for [E | H] (split); the H columns, and finite features whose
    # Gram overflows, are caught by lowrank's finiteness check of the Gram's diagonal (or of F Omega).
    try:
        with threads:
            pivots, sizes, residuals, weights = run(F, grads, grads_kind, r, hi, lo, opts, solver, seed, name)
    except NonFiniteFeatures:
        if name == "numba":
            from ._numba.checks import all_finite

            finite = all_finite(F)
        else:
            finite = bool(xp.all(xp.isfinite(F)))
        what = opts["source"]
        if not finite:
            raise nonfinite_error(what, _FUNC, like) from None
        # features and gradient residuals are scaled per batch (_unit_features): only the embeddings of
        # LastLayerGrads, which enter the gradients' Gram as <h_i, h_j> + 1, can still overflow it
        raise ValueError(
            f"{_FUNC}: the Gram matrix of the per-sample gradients overflows {F.dtype}: <h_i, h_j> + 1 is too "
            f"large for it; scale 'grads.embeddings' down. Got {describe(like)}."
        ) from None
    return _StackResult(pivots, sizes, residuals, weights, lo, hi, r, solver)


def _warn_gradient_rank(grads_kind, grads, hi):
    if grads_kind == "plain" and grads[0].shape[-1] < hi:
        warnings.warn(
            f"select: the per-sample gradients have {grads[0].shape[-1]} column(s) < max_size={hi}, so "
            "their span caps the size criterion (any subset spanning them reproduces the batch gradient). "
            "Pass richer gradients, e.g. LastLayerGrads(residuals, embeddings).",
            GradientRankWarning,
            stacklevel=3,
        )


def _select_ragged(features, grads, mask, offsets, min_size, max_size, opts, seed, backend, return_info):
    """Ragged batches (a list of arrays, or a padded stack with a mask): equal sizes are selected together."""
    batches, gparts, grads_kind, positions, starts, like = _split_ragged(features, grads, mask)
    nb = len(batches)
    xp = array_namespace(like)
    min_size = check_int(min_size, "min_size", _FUNC, low=1, allow_none=True)
    max_size = check_int(max_size, "max_size", _FUNC, low=1, allow_none=True)
    if offsets is not None:  # a padded batch's indices reach its padded length
        lengths = [int(like.shape[-2])] * nb if positions is not None else [int(F.shape[0]) for F in batches]
        starts = [int(o) for o in _check_offsets(offsets, nb, lengths)]
    name = resolve(like, backend, _FUNC)
    groups = {}
    for b, F in enumerate(batches):
        groups.setdefault(int(F.shape[0]), []).append(b)
    idx_parts, bid_parts, w_parts, rows = [], [], [], {}
    best, best_n = None, 0  # the largest batches' result names the solver and rank
    for n, members in groups.items():
        if n == 0:
            continue
        F = xp.stack([batches[b] for b in members])
        parts = tuple(xp.stack([g[b] for b in members]) for g in gparts)
        res = _run_stack(F, parts, grads_kind, min_size, max_size, opts, seed, name, like,
                         np.asarray([starts[b] for b in members], dtype=np.int64))
        if n > best_n:
            best, best_n = res, n
        cxp = array_namespace(res.pivots)
        dev = device_of(res.pivots)
        piv = res.pivots
        if positions is not None:  # compacted row -> row of the padded batch
            pos = cxp.asarray(np.stack([positions[b] for b in members]), device=dev)
            flat = piv + cxp.arange(len(members), dtype=cxp.int64, device=dev)[:, None] * n
            piv = cxp.reshape(cxp.take(cxp.reshape(pos, (-1,)), cxp.reshape(flat, (-1,)), axis=0), piv.shape)
        base = cxp.asarray([starts[b] for b in members], dtype=cxp.int64, device=dev)
        keep = cxp.arange(res.hi, dtype=cxp.int64, device=dev)[None, :] < res.sizes[:, None]
        bids = cxp.asarray(members, dtype=cxp.int64, device=dev)[:, None] + cxp.zeros_like(piv)
        idx_parts.append((piv + base[:, None])[keep])
        bid_parts.append(bids[keep])
        w_parts.append(res.weights[keep])
        for j, b in enumerate(members):
            rows[b] = (res.sizes[j], res.residuals[j, ...])
    if best is None:
        raise ValueError("select expects at least one batch with one row or more; every batch is empty.")
    res = best
    cxp = array_namespace(res.pivots)
    dev = device_of(res.pivots)
    bids = cxp.concat(bid_parts)
    order = cxp.argsort(bids, stable=True)  # batch order, each batch in pivot order
    idx = cxp.take(cxp.concat(idx_parts), order, axis=0)
    wts = cxp.take(cxp.concat(w_parts), order, axis=0)
    width = max(int(v[1].shape[0]) for v in rows.values())
    nan = cxp.full((width,), float("nan"), dtype=cxp.float64, device=dev)
    zero = cxp.zeros((), dtype=cxp.int64, device=dev)
    sizes = cxp.stack([rows[b][0] if b in rows else zero for b in range(nb)])
    residuals = cxp.stack([
        cxp.concat([rows[b][1], nan[: width - rows[b][1].shape[0]]]) if b in rows else nan for b in range(nb)
    ])
    if name == "numba":
        idx, wts, sizes, residuals = (from_numpy_like(np.asarray(a), like) for a in (idx, wts, sizes, residuals))
    if opts["strategy"] == "graft":
        _warn_gradient_rank(grads_kind, tuple(g[0] for g in gparts), res.hi)
    if not return_info:
        return idx
    return Selection(idx, wts, sizes, residuals, name, res.solver, res.rank)


def _split_ragged(features, grads, mask):
    """Per-batch (n_b, d) arrays and gradient parts, row positions (mask) and default starts."""
    if mask is not None:
        if isinstance(features, (list, tuple)):
            raise TypeError("select expects 'mask' only with a padded array of features, not with a list of batches.")
        xp = check_array(features, "features", _FUNC, ndims=(2, 3), shape_doc="(n, d) or (batch, n, d)")
        F3 = as_kernel_dtype(features, "features", _FUNC)
        F3 = F3 if features.ndim == 3 else xp.expand_dims(F3, axis=0)
        nb, n = F3.shape[0], F3.shape[1]
        m = np.asarray(to_numpy_view(mask) if is_array(mask) else mask)
        want = (nb, n) if features.ndim == 3 else (n,)
        if m.dtype != np.bool_ or m.shape != want:
            raise ValueError(
                f"The 'mask' parameter of select must be a bool array of shape {want} (one flag per row of "
                f"'features'). Got shape {m.shape}, dtype {m.dtype} instead."
            )
        m = m.reshape(nb, n)
        grads_kind, gp = _check_grads(grads, features, xp, nb, n, features.ndim == 3, finite=False)
        if gp:  # padding is padding: only the rows the mask keeps must be finite
            pad = xp.asarray(~m, device=device_of(F3))[:, :, None]
            originals = tuple(grads) if grads_kind == "last_layer" else (grads,)
            for g, nm, orig in zip(gp, _GRAD_NAMES[grads_kind], originals):
                if not bool(xp.all(xp.isfinite(g) | pad)):
                    raise nonfinite_error(nm, _FUNC, orig)
        positions = [np.flatnonzero(m[b]) for b in range(nb)]
        take = [xp.asarray(p, device=device_of(F3)) for p in positions]
        batches = [xp.take(F3[b, ...], take[b], axis=0) for b in range(nb)]
        gparts = tuple([xp.take(g[b, ...], take[b], axis=0) for b in range(nb)] for g in gp)
        return batches, gparts, grads_kind, positions, [b * n for b in range(nb)], features
    if len(features) == 0:
        raise ValueError("select expects 'features' to hold at least one batch; got an empty list.")
    batches = list(features)
    first = None
    for b, F in enumerate(batches):
        xp = check_array(F, f"features[{b}]", _FUNC, ndims=(2,), shape_doc="(n_b, d)", min_rows=0)
        batches[b] = as_kernel_dtype(F, f"features[{b}]", _FUNC)
        if first is None:
            first = F
        elif F.shape[1] != first.shape[1] or type(F) is not type(first):
            raise ValueError(
                f"select expects every batch of 'features' to have the same array type and number of "
                f"features; features[0] is {describe(first)}, features[{b}] is {describe(F)}."
            )
    xp = array_namespace(first)
    starts = list(np.cumsum([0] + [int(F.shape[0]) for F in batches[:-1]]))
    if grads is None:
        return batches, (), None, None, starts, first
    if isinstance(grads, LastLayerGrads):
        lists, names, kind = (grads.residuals, grads.embeddings), ("grads.residuals", "grads.embeddings"), "last_layer"
    else:
        lists, names, kind = (grads,), ("grads",), "plain"
    gparts = []
    for lst, nm in zip(lists, names):
        if not isinstance(lst, (list, tuple)) or len(lst) != len(batches):
            raise TypeError(
                f"select expects '{nm}' to be a list of {len(batches)} arrays (one per batch of 'features'); "
                f"got {describe(lst)}."
            )
        gparts.append([_check_grads_part(g, f"{nm}[{b}]", F, xp, (int(F.shape[0]),))
                       for b, (g, F) in enumerate(zip(lst, batches))])
    return batches, tuple(gparts), kind, None, starts, first


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
    from ._agnostic.lowrank import NonFiniteFeatures

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


def _select_numba(F, grads, grads_kind, r, hi, lo, opts, solver, seed, name):
    """NumPy in, NumPy out: low rank in threads over chunks of batches, the rest in parallel Numba kernels."""
    from ._agnostic.lowrank import lowrank
    from ._numba import criterion as ncrit
    from ._numba.checks import batch_abs_max
    from ._numba.lowrank import batch_gram, gram_ritz
    from ._numba.maxvol import run_maxvol
    from ._parallel import map_batches

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
        return pivots, sizes, np.full((nb, hi), np.nan), np.full((nb, hi), n / hi)
    parts = tuple(np.ascontiguousarray(g) for g in grads)
    # features=None: the features are the gradients (or [E | H]), so amax is max |G_b| (max |E_b|) already
    gmax = amax if opts["source"] == "grads" else None
    if grads_kind == "plain":
        K, bv, gg = ncrit.gram_plain(parts[0], pivots, gmax)
    else:
        K, bv, gg = ncrit.gram_last_layer(parts[0], parts[1], pivots, gmax)
    residuals, _ = ncrit.rho_curve(K, bv, gg)
    sizes = _sizes(np, residuals, lo, hi, opts["tol"])
    W = ncrit.nnls_batched(K, bv, sizes, n, opts["weight_reg"])
    return pivots, sizes, residuals, _scale_weights(np, W, sizes, n)


def _select_generic(F, grads, grads_kind, r, hi, lo, opts, solver, seed, name):
    """Any array-API namespace, on the arrays' own device."""
    from ._agnostic import criterion
    from ._agnostic.lowrank import lowrank

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
        return pivots, sizes, nan, xp.full((nb, hi), n / hi, dtype=xp.float64, device=dev)
    gmax = amax if opts["source"] == "grads" else None  # features=None: the same max |G_b| (max |E_b|)
    if grads_kind == "plain":
        K, bv, gg = criterion.gram_plain(xp, grads[0], pivots, gmax)
    else:
        K, bv, gg = criterion.gram_last_layer(xp, grads[0], grads[1], pivots, gmax)
    residuals, _ = criterion.rho_curve(xp, K, bv, gg)
    sizes = _sizes(xp, residuals, lo, hi, opts["tol"])
    rows = []
    for b in range(nb):  # Lawson-Hanson is sequential per batch; the generic twin loops
        m = int(sizes[b])
        w = criterion.nnls_gram(xp, *criterion.weight_system(xp, K[b, :m, :m], bv[b, :m], n, opts["weight_reg"]))
        rows.append(xp.concat([w, xp.zeros((hi - m,), dtype=xp.float64, device=dev)]))
    return pivots, sizes, residuals, _scale_weights(xp, xp.stack(rows), sizes, n)


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


def _check_strategy(strategy, grads, min_size, max_size):
    """The arguments that only GRAFT takes, and the gradients the baselines need."""
    if strategy == "graft":
        return
    for nm, value in (("min_size", min_size), ("max_size", max_size)):
        if value is not None:
            raise ValueError(
                f"The '{nm}' parameter of select applies to strategy='graft' only; strategy={strategy!r} takes "
                f"round(fraction * n) rows per batch. Got {nm}={value!r} instead."
            )
    if grads is None and strategy in ("craig", "gradmatch"):
        raise ValueError(
            f"select with strategy={strategy!r} needs per-sample gradients: pass 'grads' (an array, a list of "
            "arrays or LastLayerGrads(residuals, embeddings)). Got grads=None instead."
        )


def _gradient_features(grads):
    """What stands in for ``features=None``: (the gradients, None), or ([E | H], C) for LastLayerGrads."""
    if grads is None:
        raise ValueError(
            "select needs 'features' or 'grads': with features=None it selects on the per-sample gradients. "
            "Got features=None and grads=None."
        )
    if not isinstance(grads, LastLayerGrads):
        if is_array(grads):
            check_array(grads, "grads", _FUNC, ndims=(2, 3), shape_doc="(n, p) or (batch, n, p)")
        elif not isinstance(grads, (list, tuple)):
            raise TypeError(
                f"select expects 'grads' to be None, an array of per-sample gradients, a list of them or "
                f"LastLayerGrads(residuals, embeddings); got {describe(grads)}."
            )
        else:
            for b, g in enumerate(grads):
                check_array(g, f"grads[{b}]", _FUNC, ndims=(2,), shape_doc="(n_b, p)", min_rows=0)
        return grads, None
    E, H = grads
    if isinstance(E, (list, tuple)) or isinstance(H, (list, tuple)):
        if not (isinstance(E, (list, tuple)) and isinstance(H, (list, tuple)) and len(E) == len(H) and len(E)):
            raise TypeError(
                "select expects 'grads.residuals' and 'grads.embeddings' to be two arrays, or two non-empty lists "
                f"of the same length (one array per batch); got {describe(E)} and {describe(H)}."
            )
        parts = [_residuals_embeddings(e, h, f"[{b}]", (2,), "(n_b, C)", "(n_b, h)") for b, (e, h) in enumerate(zip(E, H))]
        widths = {int(e.shape[-1]) for e in E}
        if len(widths) != 1:
            raise ValueError(f"select expects every batch of 'grads.residuals' to have the same C; got {sorted(widths)}.")
        return parts, widths.pop()
    return _residuals_embeddings(E, H, "", (2, 3), "(n, C) or (batch, n, C)", "(n, h) or (batch, n, h)"), int(E.shape[-1])


def _residuals_embeddings(e, h, at, ndims, doc_e, doc_h):
    """[e | h] along the last axis, after checking that e and h pair up."""
    xp = check_array(e, f"grads.residuals{at}", _FUNC, ndims=ndims, shape_doc=doc_e, min_rows=0)
    check_array(h, f"grads.embeddings{at}", _FUNC, ndims=ndims, shape_doc=doc_h, min_rows=0)
    if tuple(h.shape[:-1]) != tuple(e.shape[:-1]) or type(h) is not type(e):
        raise ValueError(
            f"select expects 'grads.embeddings{at}' with one row per row of 'grads.residuals{at}', in the same "
            f"array library; got {describe(h)} and {describe(e)}."
        )
    e, h = as_kernel_dtype(e, f"grads.residuals{at}", _FUNC), as_kernel_dtype(h, f"grads.embeddings{at}", _FUNC)
    dt = xp.result_type(e.dtype, h.dtype)
    return xp.concat([xp.astype(e, dt), xp.astype(h, dt)], axis=-1)


_INT64_MAX = 2**63 - 1


def _check_offsets(offsets, nb, lengths):
    """(nb,) int64 dataset positions; every ``offsets[b] + lengths[b]`` must fit int64, checked before the cast."""
    off = np.asarray(offsets)
    if off.shape != (nb,) or not np.issubdtype(off.dtype, np.integer):
        raise ValueError(
            f"The 'offsets' parameter of select must be an int array of shape ({nb},) (one per batch). "
            f"Got shape {off.shape}, dtype {off.dtype} instead."
        )
    for b, (o, n) in enumerate(zip(off.tolist(), lengths)):  # Python ints: no wrap-around in any dtype
        if o < 0 or o + n > _INT64_MAX:
            raise ValueError(
                f"The 'offsets' parameter of select must hold non-negative dataset positions with offsets[b] + n_b "
                f"<= 2**63 - 1 (every index an int64). Got offsets[{b}] = {o} (n_b = {n}) instead."
            )
    return off.astype(np.int64)


_GRAD_NAMES = {"plain": ("grads",), "last_layer": ("grads.residuals", "grads.embeddings")}


def _check_grads_part(part, nm, features, xp, want, *, finite=True):
    """One gradient array: right ndim, one row per sample, same library as features, finite (with ``finite``).

    Returns it as the kernels take it (:func:`as_kernel_dtype`)."""
    check_array(part, nm, _FUNC, ndims=(len(want) + 1,), shape_doc="(batch, n, p)" if len(want) == 2 else "(n, p)",
                min_rows=0)
    if tuple(part.shape[:-1]) != want:
        raise ValueError(
            f"select expects '{nm}' to have one row per sample of 'features' (leading shape {want}); "
            f"got {describe(part)} for features of {describe(features)}."
        )
    pxp = array_namespace(part)
    if pxp is not xp and type(part) is not type(features):
        raise TypeError(f"select expects '{nm}' in the same array library as 'features'; got {describe(part)}.")
    if finite and not bool(pxp.all(pxp.isfinite(part))):
        raise nonfinite_error(nm, _FUNC, part)
    return as_kernel_dtype(part, nm, _FUNC)


def _check_grads(grads, features, xp, nb, n, batched, *, finite=True):
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
    parts = [_check_grads_part(part, nm, features, xp, want, finite=finite) for part, nm in zip(parts, names)]
    parts = tuple(p if batched else xp.expand_dims(p, axis=0) for p in parts)
    return kind, parts
