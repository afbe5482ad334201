"""The public :func:`select`: GRAFT's per-batch selection, many batches per call."""

import contextlib
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _family
from ._backends import resolve
from ._common import METHODS, STRATEGIES
from ._exceptions import GradientRankWarning
from ._namespace import (
    array_namespace,
    describe,
    device_of,
    from_numpy_like,
    is_array,
    to_numpy_view,
)
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
from .strategies import REGISTRY
from .strategies import load as load_strategy

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
        batch's mean loss (see :func:`select`). ``strategy="crest"``: mean 1
        over the call.
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
    batch_labels : None or int64 array (n_batches,)
        With ``labels``: the selection ran on class chunks (see :func:`select`),
        and ``sizes`` / ``residuals`` describe those chunks, in this order; this
        is each chunk's label. None otherwise.
    """

    indices: Any
    weights: Any
    sizes: Any
    residuals: Any
    backend: str
    solver: str
    rank: int
    batch_labels: Any = None


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
    labels=None,
    budget="call",
    groups=None,
    sources=None,
    hessian_diag=None,
    scores=None,
    strategy_params=None,
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
       rows. With ``budget="call"`` (the default) these are only the starting
       sizes: the call as a whole then selects ``round(fraction * N)`` rows (N:
       all its rows), see ``budget``.
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

    Class-balanced selection (``labels``): the call's budget k is split per
    class, ``ceil(k n_c / N)`` rows for a class of n_c of the call's N rows (at
    least 1, so every class present in the call is represented), as CRAIG,
    CREST and CORDS' GradMatch do. Each class's rows (across all the call's
    batches, in batch and row order) are cut into near-equal chunks of at most
    the largest batch's length, and every step (MaxVol, the criterion, the
    weights, or the baseline) runs on those chunks, each chunk with the share
    ``ceil(k n_c / N) / n_c`` of its rows; GRAFT's sizes then spread the
    class's quota over its chunks (``budget``). ``Selection.sizes`` and
    ``residuals`` then describe the chunks (``Selection.batch_labels`` holds
    each chunk's label), indices stay the rows' own, chunk after chunk. The
    labels may be anything integer: classes, or strata (difficulty bins, data
    sources) whose shares should be kept.

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
    * ``"gradmatch"`` (Killamsetty et al., ICML 2021, the OMP variant as CORDS
      runs it: ``OrthogonalMP_REG_Parallel`` with ``positive=True``), per batch
      (per class chunk with ``labels``): orthogonal matching pursuit of the
      batch gradient g = sum_i g_i, at most m steps. Each step takes the row
      with the largest signed correlation <g_j, r>, r = g - sum_{j in S} w_j g_j
      (over all rows; ties to the lowest index). The first row gets its plain
      projection <g_j, g> / ||g_j||^2, as in CORDS; later steps refit
      min ||sum_{j in S} w_j g_j - g||^2 + gradmatch_lambda * s * ||w||^2 with
      s the batch's mean squared per-sample gradient norm (CORDS' ridge is an
      absolute lambda; ours is relative so that the weights do not depend on
      the gradients' scale), and while a weight is negative the row of the most
      negative one leaves S and the fit is redone. Like CORDS, the pursuit
      stops early when the best row is already in S or the row just added had
      to leave; it also stops once ||r|| <= 1e-4 ||g|| (CORDS' default tol;
      at once when g = 0). The rows of S come first, in the order they were
      added; a shortfall is filled with the batch's other rows of smallest key
      in the "random" strategy's stream (same random_state and batch position),
      each at the mean of the fitted weights (1 if none). All m weights are then
      scaled to sum to n, so sum_j w_j loss_j / n is CORDS' training loss
      dot(loss, w / sum(w)) (n / m each if the fit is all zero). Deterministic
      for a given ``random_state``. Needs ``grads``; memory n x n per batch
      being selected.
    * ``"crest"`` (Yang, Kang, Mirzasoleiman, ICML 2023), CREST's selection
      step: CRAIG's facility location (the same kernel) on the last-layer
      logit gradients alone, the residuals e_i = p_i - y_i of
      :class:`LastLayerGrads` (or the rows of plain ``grads``), usually with
      ``labels`` (CREST selects per class); its cluster-size weights are
      rescaled to mean 1 over the call's selection. ``residuals`` hold rho(m)
      of those rows. Its pools, its re-mixed batches and the trigger that
      decides when to select again live in
      :class:`graft_array.adapters.crest.CrestSampler`.

    The rest of GRAFT's family (each module's docstring, under
    ``graft_array.strategies``, states every choice and how it departs from
    the reference code), each with ``round(fraction * n)`` rows per batch or,
    with classes, ``ceil(k n_c / N)`` per class as above:

    * ``"adacore"`` (Pooladzandi et al., ICML 2022): CRAIG's facility location
      on the Hessian-preconditioned gradients g_i / (|D_i| + delta), delta =
      ``damping`` times the batch's mean |D| (``hessian_diag`` gives D; with
      :class:`LastLayerGrads`, the logit diagonal q laid out like the
      residuals, D_i = q_i (x) [h_i^2; 1], or ``"softmax"`` for
      q = |e|(1 - |e|) = p(1 - p)); cluster-size weights.
    * ``"colm"`` (Nguyen et al., 2024): per source (``sources``): small
      sources whole, the rest by facility location with cosine similarities on
      the gradients normalised as Adam would step with them (moments in a
      :class:`graft_array.ColmState` passed in ``strategy_params``, updated in
      place) and cut to each source's ``dims`` top coordinates.
    * ``"sas"`` (Joshi & Mirzasoleiman, ICML 2023): within each latent group
      (``groups``, else k-means of the features), the most central embeddings
      by thresholded cosine similarity, redundancy-penalised (``penalty``).
      Uniform weights. No ``grads``.
    * ``"clipcov"`` (Joshi et al., AISTATS 2024): ``features=(image_emb,
      text_emb)``; per latent group, the greedy that keeps the subset's
      image-caption cross-covariance closest to the group's
      (:func:`graft_array.cross_covariance_error` reports it). Uniform weights.
      No ``grads``.
    * ``"mkdt"`` / ``"pdd"``: the selectors inside two dataset distillation
      methods, the rows of highest ``scores`` (a distillation loss; a
      forgetting count), ties to the lowest index. Uniform weights. No
      ``grads``. The synthesis of images is out of scope.

    Ties go to the lowest index wherever they are exact in floating point.
    The Numba kernels compute equal rows' similarities identically; the
    generic path takes its Grams from a matrix product, whose BLAS may round
    two equal rows' products differently, so there a later copy of a row can
    come first.

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
    strategy : {"graft", "random", "craig", "gradmatch", "crest", "adacore", "colm", "sas", "clipcov", "mkdt", \
"pdd"}, default="graft"
        GRAFT, or a baseline or family member with the same API (see above).
    fraction : float in (0, 1], default=0.25
        The budget: the share of the call's rows selected (GRAFT with
        ``budget="call"``: exactly ``round(fraction * N)`` rows over the call;
        the baselines and GRAFT without ``grads``: ``round(fraction * n_b)``
        rows of each batch). Also the centre of each batch's size band.
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
    labels : None or int array laid out like the rows ((n,), (batch, n), or a list of (n_b,) arrays)
        Class labels (or any integer strata) of the rows: class-balanced
        selection (see above). With ``mask``, the padding's labels are not
        read. ``None``: no classes.
    budget : {"call", "batch"} or int >= 0, default="call"
        How GRAFT's gradient-aware sizes meet ``fraction``. ``"call"``: the
        call selects ``round(fraction * N)`` rows in all (each class its quota
        with ``labels``): the batches start at their criterion's sizes, then
        rows go to, or come from, the batches where they change
        ``||g_b|| rho_b(m)`` most, each within its ``band``; this minimises
        (greedily) the sum of the batches' absolute residuals, which bounds
        the error of the call's whole gradient. Batches whose criterion is met
        early so hand their rows to those that need them (the paper's dynamic
        size, without overspending). An int: that many rows for the call
        instead of ``round(fraction * N)`` (adapters use it to give each call of
        a pass its exact share). ``"batch"``: every batch keeps its own
        criterion's size (each between the band's ends; the total is not
        controlled). Only GRAFT with ``grads`` uses it.
    groups : None or int array laid out like the rows
        ``"sas"`` / ``"clipcov"``: the latent classes (default: k-means of the
        embeddings with ``strategy_params["n_groups"]`` clusters, seeded by
        ``random_state``). Taken as ``labels``; give one of the two.
    sources : None or int array laid out like the rows
        ``"colm"``: the data source of each row (required). Taken as ``labels``.
    hessian_diag : None, "softmax", or an array laid out like ``grads`` (like ``grads.residuals`` for LastLayerGrads)
        ``"adacore"``: the per-sample Hessian diagonal (required; its absolute
        value is used).
    scores : None or float array laid out like the rows ((n,), (batch, n) or a list)
        ``"mkdt"`` / ``"pdd"``: one score per row, the highest kept (required).
    strategy_params : None or dict
        The family's options, each with a default: ``"adacore"``: ``damping``
        (1e-3); ``"colm"``: ``small_sources`` ("auto", an int k or a list of
        ids), ``dims`` (2560), ``beta1`` (0.9), ``beta2`` (0.999), ``eps``
        (1e-8), ``state`` (None or a :class:`graft_array.ColmState`);
        ``"sas"``: ``penalty`` (True), ``n_groups`` (10); ``"clipcov"``:
        ``n_groups`` (10). Any other key raises ValueError.
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
        budget=_check_budget(budget),
    )
    return_info = check_bool(return_info, "return_info", _FUNC)
    rng = check_random_state(random_state, "random_state", _FUNC)
    seed = int(rng.integers(2**63))  # one test matrix for every batch, whatever the chunking
    opts["seed"], opts["strategy_params"] = seed, strategy_params
    extra = dict(groups=groups, sources=sources, hessian_diag=hessian_diag, scores=scores)
    features, grads, labels = _family.prepare(opts, features, grads, labels, extra, mask)
    _check_strategy(opts["strategy"], grads, min_size, max_size)
    opts["split"] = None  # features=None with LastLayerGrads: the number of residual columns of [E | H]
    if features is None:
        features, opts["split"] = _gradient_features(grads)
    opts["source"] = "grads" if features is grads or opts["split"] is not None else "features"
    if labels is not None:
        return _select_labelled(features, grads, mask, labels, offsets, min_size, max_size, opts, seed, backend,
                                return_info)
    if isinstance(features, (list, tuple)) or mask is not None:
        batches, gparts, grads_kind, local, starts, like = _ragged_input(features, grads, mask, offsets)
        maps = [s + loc for s, loc in zip(starts, local)]
        return _select_lists(batches, gparts, grads_kind, maps, starts, like, min_size, max_size, opts, seed,
                             backend, return_info)

    F, grads_kind, grads, starts = _stacked_input(features, grads, offsets, opts)
    nb, n = F.shape[0], F.shape[1]
    min_size = check_int(min_size, "min_size", _FUNC, low=1, allow_none=True)
    max_size = check_int(max_size, "max_size", _FUNC, low=1, allow_none=True)
    name = resolve(features, backend, _FUNC)
    res = _run_stack(F, grads, grads_kind, min_size, max_size, opts, seed, name, features, starts, opts["fraction"])
    res = res.finish(_budget_sizes([res], [np.zeros(nb, dtype=np.int64)], {0: _call_budget(opts, nb * n)}, opts)[0])

    cxp = array_namespace(res.pivots)
    dev = device_of(res.pivots)
    base = cxp.asarray(starts, dtype=cxp.int64, device=dev)
    keep = cxp.arange(res.hi, dtype=cxp.int64, device=dev)[None, :] < res.sizes[:, None]
    idx = (res.pivots + base[:, None])[keep]  # flat, batch after batch, no loop over batches
    wts = _call_weights(cxp, res.weights[keep], opts, nb * n)
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
    sizes: Any  # (B,) int64: the criterion's sizes until finish() gives the final ones
    residuals: Any  # (B, hi) float64
    weights: Any  # (B, hi) float64, zero beyond sizes[b]; None until finish()
    lo: int
    hi: int
    rank: int
    solver: str
    gnorm: Any  # None, or (sqrt(gg) (B,), k (B,)) NumPy: batch b's gradient norm is sqrt(gg_b) 2^-k_b
    fit: Any  # sizes (B,) NumPy int64 -> weights (B, hi) in the compute namespace

    def finish(self, sizes):
        """The result with the final sizes (NumPy (B,) int64, within [lo, hi]) and their weights."""
        xp = array_namespace(self.pivots)
        return self._replace(sizes=xp.asarray(sizes, dtype=xp.int64, device=device_of(self.pivots)),
                             weights=self.fit(sizes))


BUDGETS = ("call", "batch")


def _check_budget(budget):
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, (bool, np.bool_)):
        return check_int(budget, "budget", _FUNC, low=0)
    if isinstance(budget, str) and budget in BUDGETS:
        return budget
    raise (TypeError if not isinstance(budget, str) else ValueError)(
        f"The 'budget' parameter of select must be 'call', 'batch' or an int >= 0 (the rows this call selects). "
        f"Got {budget!r} instead."
    )


def _call_budget(opts, rows):
    """The rows one call selects: ``budget`` when it is a number (at most ``rows``), else round(fraction * rows).

    At least 1 when there are rows.
    """
    if not rows:
        return 0
    if isinstance(opts["budget"], int):
        return max(1, min(rows, opts["budget"]))
    return max(1, int(round(opts["fraction"] * rows)))


#: Per-thread hooks of one select call: ``budget_sizes`` and ``call_weights`` stand in for
#: :func:`_budget_sizes` and :func:`_call_weights`, the only steps that couple a call's batches.
#: ``graft_array.adapters.dask`` sets them around each chunk's call, so that chunks on many workers
#: give one call's result; unset (always, outside that module), select runs as documented.
_CALL_HOOKS = threading.local()


def _call_weights(xp, wts, opts, rows):
    """``strategy="crest"``: the cluster sizes (summing to the call's rows) rescaled to mean 1 over the call."""
    hook = getattr(_CALL_HOOKS, "call_weights", None)
    if hook is not None:
        return hook(xp, wts, opts, rows)
    if opts["strategy"] != "crest" or wts.shape[0] == 0:
        return wts
    return wts * (wts.shape[0] / rows)


def _budget_sizes(results, groups, budgets, opts):
    """Final sizes (a NumPy int64 (B_s,) per stack): each group's budget spread by the residual curves.

    ``results``: the stacks' :class:`_StackResult` (criterion sizes in ``sizes``);
    ``groups``: for each stack, the budget group of each batch (NumPy int (B_s,));
    ``budgets``: group -> rows. Only GRAFT with gradients and ``budget="call"``
    moves sizes (otherwise the criterion's sizes stay). Within a group the
    batches start at their criterion sizes; while the group's total is below
    its budget, the next row goes to the batch whose absolute residual
    ||g_b|| rho_b(m) it lowers most, and while above, the row removed is the
    one that lowers it least (each batch within its [lo, hi]). The decreases
    ||g_b|| (rho_b(m - 1) - rho_b(m)) are first made non-increasing along m
    (running minimum), so that taking the globally largest ones gives every
    batch a prefix of its pivot order; ties go to the lower batch, then the
    lower m. Minimising sum_b ||g_b|| rho_b(m_b) bounds the error of the whole
    call's gradient sum_b g_b by the subsets' fits.
    """
    hook = getattr(_CALL_HOOKS, "budget_sizes", None)
    if hook is not None:
        return hook(results, groups, budgets, opts)
    sizes = [np.asarray(_host_array(r.sizes), dtype=np.int64) for r in results]
    if opts["strategy"] != "graft" or opts["budget"] == "batch" or any(r.gnorm is None for r in results):
        return sizes
    flat = np.concatenate(sizes)  # every batch's size; batch key = its place here
    cands = []  # per stack: (drops (B_s, hi), sqrt(gg), k, groups, first key, lo, hi)
    offset = 0
    for r, grp in zip(results, groups):
        rho = _host_array(r.residuals)[:, : r.hi]
        nb = rho.shape[0]
        prev = np.concatenate([np.ones((nb, 1)), rho[:, :-1]], axis=1)
        drop = np.nan_to_num(prev - rho, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
        cands.append((drop, *r.gnorm, grp, offset, r.lo, r.hi))
        offset += nb
    out = flat.copy()
    for g, total in budgets.items():
        kmin = min((int(k[grp == g].min()) for _, _, k, grp, *_ in cands if np.any(grp == g)), default=0)
        gains, keys, ms, grow_ok, shrink_ok = [], [], [], [], []
        for drop, sqrt_gg, k, grp, off, lo, hi in cands:
            sel = np.flatnonzero(grp == g)
            if not sel.size:
                continue
            crit = flat[off + sel, None]
            norm = np.ldexp(np.nan_to_num(sqrt_gg[sel], nan=0.0), kmin - k[sel])  # exact powers of two
            gain = np.minimum.accumulate(norm[:, None] * drop[sel], axis=1)  # (b, m-1) for m = 1..hi
            m = np.broadcast_to(np.arange(1, hi + 1)[None, :], gain.shape)
            gains.append(gain.ravel())
            keys.append(np.repeat(off + sel, hi))
            ms.append(m.ravel())
            grow_ok.append((m > crit).ravel())
            shrink_ok.append(((m > lo) & (m <= crit)).ravel())
        if not gains:
            continue
        gain, key, m = np.concatenate(gains), np.concatenate(keys), np.concatenate(ms)
        have = int(flat[np.unique(key)].sum())
        if have < total:
            ok = np.flatnonzero(np.concatenate(grow_ok))
            np.add.at(out, key[ok[np.lexsort((m[ok], key[ok], -gain[ok]))][: total - have]], 1)
        elif have > total:
            ok = np.flatnonzero(np.concatenate(shrink_ok))
            np.add.at(out, key[ok[np.lexsort((-m[ok], key[ok], gain[ok]))][: have - total]], -1)
    return np.split(out, np.cumsum([len(sz) for sz in sizes])[:-1])


def _host_array(a):
    """A small result array as NumPy (from the host or a device)."""
    from ._agnostic.criterion import _host

    return a if isinstance(a, np.ndarray) else _host(a)


def _feature_width(d, opts):
    """The d the rank and the solver rule see: C (h + 1) for [E | H] (features=None with LastLayerGrads)."""
    split = opts.get("split")
    return d if split is None else split * (d - split + 1)


def _band(n, d, opts, min_size, max_size, fraction):
    """(lo, hi, r) for batches of n rows and d features whose share is ``fraction``."""
    centre = fraction * n
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


def _run_stack(F, grads, grads_kind, min_size, max_size, opts, seed, name, like, starts, fraction):
    """Selection of every batch of the stack F (B, n, d) on backend ``name``; results in the compute namespace.

    ``starts`` (B,) int64: each batch's dataset position (seeds the "random" strategy); ``fraction``: the
    batches' share. The sizes are the criterion's until :meth:`_StackResult.finish`.
    """
    xp = array_namespace(F)
    nb, n, d = F.shape
    graft = REGISTRY[opts["strategy"]].adaptive_size  # GRAFT: the low rank, MaxVol and the size criterion
    d = _feature_width(d, opts)
    lo, hi, r = _band(n, d, dict(opts, has_grads=graft and grads_kind is not None), min_size, max_size, fraction)
    if name == "numba":
        from ._parallel import threads_for

        F = to_numpy_view(F)
        grads = tuple(to_numpy_view(g) for g in grads)
        threads = threads_for(nb * n)  # a small call runs on this thread: no wake-up of the others
    else:
        threads = contextlib.nullcontext()
    strategy = load_strategy(opts["strategy"])
    if not graft:  # the baselines: round(fraction * n) rows, no low-rank step, no solver
        with threads:
            pivots, sizes, residuals, weights = strategy.run(F, grads, grads_kind, hi, opts, seed, starts, name)
        return _StackResult(pivots, sizes, residuals, None, hi, hi, 0, "none", None, lambda _sizes: weights)
    from ._agnostic.lowrank import NonFiniteFeatures, choose_solver

    solver = choose_solver(n, d, r) if opts["solver"] == "auto" else opts["solver"]
    # NonFiniteFeatures: the pass that finds each batch's max |entry| for its scale (_unit_features) sees a NaN
    # or infinity in F, or in its E columns only for [E | H] (split); the H columns, and finite features whose
    # Gram overflows, are caught by lowrank's finiteness check of the Gram's diagonal (or of F Omega).
    try:
        with threads:
            pivots, sizes, residuals, gnorm, fit = strategy.run(F, grads, grads_kind, r, hi, lo, opts, solver, seed,
                                                                name)
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
    return _StackResult(pivots, sizes, residuals, None, lo, hi, r, solver, gnorm, fit)


def _warn_gradient_rank(grads_kind, grads, hi):
    if grads_kind == "plain" and grads[0].shape[-1] < hi:
        warnings.warn(
            f"select: the per-sample gradients have {grads[0].shape[-1]} column(s) < max_size={hi}, so "
            "their span caps the size criterion (any subset spanning them reproduces the batch gradient). "
            "Pass richer gradients, e.g. LastLayerGrads(residuals, embeddings).",
            GradientRankWarning,
            stacklevel=3,
        )


def _stacked_input(features, grads, offsets, opts):
    """A stacked call's checked inputs: (F (B, n, d) in a kernel dtype, grads_kind, grads parts (B, n, .), starts).

    ``starts`` (NumPy int64 (B,)): each batch's dataset position, ``offsets`` or ``b * n``. ``features`` itself
    stays the caller's array (messages, output type).
    """
    xp = check_array(features, "features", _FUNC, ndims=(2, 3), shape_doc="(n, d) or (batch, n, d)")
    Fk = as_kernel_dtype(features, "features", _FUNC)
    batched = features.ndim == 3
    nb = features.shape[0] if batched else 1
    n = features.shape[-2]
    # features=None with plain gradients: the features' max |entry| pass (_unit_features) checks the same array
    # for NaN and infinity (and its result scales the criterion too), so no separate pass here
    on_grads = features is grads and opts["strategy"] == "graft"
    grads_kind, parts = _check_grads(grads, features, xp, nb, n, batched, finite=not on_grads)
    starts = np.arange(nb, dtype=np.int64) * n if offsets is None else _check_offsets(offsets, nb, [n] * nb)
    return (Fk if batched else xp.expand_dims(Fk, axis=0)), grads_kind, parts, starts


def _ragged_input(features, grads, mask, offsets):
    """A ragged call's checked inputs: (batches, grads parts, grads_kind, local rows, starts, like).

    ``local[b]`` (NumPy int64 (n_b,)): the rows of batch b in the caller's layout (the mask's positions in a
    padded batch, else 0..n_b-1); ``starts[b]``: its dataset position (``offsets``, else the default of
    :func:`_split_ragged`).
    """
    batches, gparts, grads_kind, positions, starts, like = _split_ragged(features, grads, mask)
    nb = len(batches)
    if offsets is not None:  # a padded batch's indices reach its padded length
        lengths = [int(like.shape[-2])] * nb if positions is not None else [int(F.shape[0]) for F in batches]
        starts = [int(o) for o in _check_offsets(offsets, nb, lengths)]
    local = [np.arange(int(F.shape[0]), dtype=np.int64) if positions is None else positions[b]
             for b, F in enumerate(batches)]
    return batches, gparts, grads_kind, local, starts, like


def _select_lists(batches, gparts, grads_kind, maps, starts, like, min_size, max_size, opts, seed, backend,
                  return_info, *, fractions=None, groups=None, budgets=None, batch_labels=None):
    """Batches given one by one (a list, a padded stack with a mask, or class chunks); equal shapes go together.

    ``maps[b]`` (NumPy int64 (n_b,)): the index each row of batch b stands for;
    ``starts[b]``: its dataset position (seeds "random"). ``fractions`` (per
    batch; default ``opts["fraction"]``) set each batch's share, ``groups`` /
    ``budgets`` the budget groups (default: one, round(fraction * rows)).
    """
    nb = len(batches)
    xp = array_namespace(like)
    min_size = check_int(min_size, "min_size", _FUNC, low=1, allow_none=True)
    max_size = check_int(max_size, "max_size", _FUNC, low=1, allow_none=True)
    rows_all = sum(int(F.shape[0]) for F in batches)
    fractions = [opts["fraction"]] * nb if fractions is None else fractions
    groups = np.zeros(nb, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    budgets = {0: _call_budget(opts, rows_all)} if budgets is None else budgets
    name = resolve(like, backend, _FUNC)
    stacks = {}
    for b, F in enumerate(batches):
        if int(F.shape[0]):
            stacks.setdefault((int(F.shape[0]), fractions[b]), []).append(b)
    if not stacks:
        raise ValueError("select expects at least one batch with one row or more; every batch is empty.")
    results, members_of = [], []
    for (n, frac), members in stacks.items():
        F = xp.stack([batches[b] for b in members])
        parts = tuple(xp.stack([g[b] for b in members]) for g in gparts)
        results.append(_run_stack(F, parts, grads_kind, min_size, max_size, opts, seed, name, like,
                                  np.asarray([starts[b] for b in members], dtype=np.int64), frac))
        members_of.append(members)
    final = _budget_sizes(results, [groups[m] for m in members_of], budgets, opts)
    results = [r.finish(s) for r, s in zip(results, final)]
    best = max(zip(stacks, results), key=lambda kv: kv[0][0])[1]  # the largest batches name the solver and rank
    cxp = array_namespace(best.pivots)
    dev = device_of(best.pivots)
    idx_parts, bid_parts, w_parts, rows = [], [], [], {}
    for res, members in zip(results, members_of):
        piv = res.pivots
        table = cxp.asarray(np.stack([maps[b] for b in members]), device=dev)  # (B_s, n) global indices
        n = int(table.shape[1])
        flat = piv + cxp.arange(len(members), dtype=cxp.int64, device=dev)[:, None] * n
        gidx = cxp.reshape(cxp.take(cxp.reshape(table, (-1,)), cxp.reshape(flat, (-1,)), axis=0), piv.shape)
        keep = cxp.arange(res.hi, dtype=cxp.int64, device=dev)[None, :] < res.sizes[:, None]
        bids = cxp.asarray(members, dtype=cxp.int64, device=dev)[:, None] + cxp.zeros_like(piv)
        idx_parts.append(gidx[keep])
        bid_parts.append(bids[keep])
        w_parts.append(res.weights[keep])
        for j, b in enumerate(members):
            rows[b] = (res.sizes[j], res.residuals[j, ...])
    order = cxp.argsort(cxp.concat(bid_parts), stable=True)  # batch order, each batch in pivot order
    idx = cxp.take(cxp.concat(idx_parts), order, axis=0)
    wts = _call_weights(cxp, cxp.take(cxp.concat(w_parts), order, axis=0), opts, rows_all)
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
        _warn_gradient_rank(grads_kind, tuple(g[0] for g in gparts), best.hi)
    if not return_info:
        return idx
    if batch_labels is not None:
        batch_labels = from_numpy_like(np.asarray(batch_labels, dtype=np.int64), like)
    return Selection(idx, wts, sizes, residuals, name, best.solver, best.rank, batch_labels)


def class_quota(total, n_c, n):
    """A class's share of the call's budget ``total``: ``ceil(total n_c / n)``, at least 1, at most ``n_c``."""
    return min(n_c, max(1, -(-total * n_c // n)))  # Python ints: no overflow


def _select_labelled(features, grads, mask, labels, offsets, min_size, max_size, opts, seed, backend, return_info):
    """Class-balanced selection: each class's rows of the call, cut into chunks, with its share of the budget."""
    if isinstance(features, (list, tuple)) or mask is not None:
        batches, gparts, grads_kind, local, starts, like = _ragged_input(features, grads, mask, offsets)
    else:
        F3, grads_kind, gp, starts = _stacked_input(features, grads, offsets, opts)
        nb, n = F3.shape[0], F3.shape[1]
        batches = [F3[b, ...] for b in range(nb)]
        gparts = tuple([g[b, ...] for b in range(nb)] for g in gp)
        local = [np.arange(n, dtype=np.int64)] * nb
        like = features
    lab = _check_labels(labels, features, mask, batches, local)
    xp = array_namespace(like)
    dev = device_of(batches[0])
    gidx = np.concatenate([int(s) + loc for s, loc in zip(starts, local)])
    lab = np.concatenate(lab)
    N = int(lab.shape[0])
    if N == 0:
        raise ValueError("select expects at least one batch with one row or more; every batch is empty.")
    Fall = xp.concat(list(batches), axis=0)
    Gall = tuple(xp.concat(list(g), axis=0) for g in gparts)
    total = _call_budget(opts, N)
    width = max(int(F.shape[0]) for F in batches)
    quotas, finish = None, None
    if opts["strategy"] == "colm":  # per source: Adam-normalised gradients on the source's top coordinates
        from .strategies import colm

        Gall, grads_kind, quotas, finish = colm.prepare(xp, Gall, grads_kind, lab, total, opts["params"])
    chunks, cmaps, cstarts, fracs, groups, budgets, clabels = [], [], [], [], [], {}, []
    cgrads = tuple([] for _ in Gall)
    for c in np.unique(lab):
        rows_c = np.flatnonzero(lab == c)
        n_c = int(rows_c.size)
        k_c = class_quota(total, n_c, N) if quotas is None else quotas[int(c)]
        budgets[int(c)] = k_c
        for part in np.array_split(rows_c, -(-n_c // width)):  # near-equal chunks of at most `width` rows
            take = xp.asarray(part, device=dev)
            chunks.append(xp.take(Fall, take, axis=0))
            for lst, G in zip(cgrads, Gall):
                lst.append(xp.take(G, take, axis=0))
            cmaps.append(gidx[part])
            cstarts.append(int(gidx[part[0]]))
            fracs.append(k_c / n_c)
            groups.append(int(c))
            clabels.append(int(c))
    out = _select_lists(chunks, cgrads, grads_kind, cmaps, cstarts, like, min_size, max_size,
                        opts, seed, backend, return_info or finish is not None, fractions=fracs, groups=groups,
                        budgets=budgets, batch_labels=clabels)
    if finish is None:
        return out
    picked = np.asarray(_host_array(out.indices), dtype=np.int64)
    sorter = np.argsort(gidx)
    finish(sorter[np.searchsorted(gidx, picked, sorter=sorter)])  # the rows of the call that were selected
    return out if return_info else out.indices


def _check_labels(labels, features, mask, batches, local):
    """Each batch's labels (NumPy int64, one per row of ``batches``) from ``labels`` laid out like the rows."""
    nb = len(batches)
    if isinstance(labels, (list, tuple)) and not isinstance(features, (list, tuple)):
        labels = np.asarray(labels)
    if isinstance(features, (list, tuple)):
        if not isinstance(labels, (list, tuple)) or len(labels) != nb:
            raise TypeError(
                f"The 'labels' parameter of select must be a list of {nb} int arrays (one per batch of "
                f"'features') when 'features' is a list. Got {describe(labels)} instead."
            )
        raw = [np.asarray(to_numpy_view(v) if is_array(v) else v) for v in labels]
        want = [(int(F.shape[0]),) for F in batches]
    else:
        arr = np.asarray(to_numpy_view(labels) if is_array(labels) else labels)
        lead = tuple(features.shape[:-1]) if features is not None else None
        shape = lead if lead is not None else arr.shape
        if arr.shape != shape:
            raise ValueError(
                f"The 'labels' parameter of select must hold one int label per row of 'features' (shape "
                f"{shape}). Got shape {arr.shape} instead."
            )
        arr = arr.reshape(nb, -1)
        raw = [arr[b] for b in range(nb)]
        want = None
    out = []
    for b, v in enumerate(raw):
        if v.dtype == np.bool_ or not np.issubdtype(v.dtype, np.integer):
            raise ValueError(
                f"The 'labels' parameter of select must hold integers (class labels or strata). Got dtype "
                f"{v.dtype} instead."
            )
        if want is not None and v.shape != want[b]:
            raise ValueError(
                f"The 'labels' parameter of select must have one label per row of features[{b}] (shape "
                f"{want[b]}). Got labels[{b}] of shape {v.shape} instead."
            )
        out.append(v[local[b]].astype(np.int64) if want is None else v.astype(np.int64))
    return out


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


def _check_strategy(strategy, grads, min_size, max_size):
    """The arguments that only GRAFT takes, and the gradients the baselines need."""
    if REGISTRY[strategy].adaptive_size:
        return
    for nm, value in (("min_size", min_size), ("max_size", max_size)):
        if value is not None:
            raise ValueError(
                f"The '{nm}' parameter of select applies to strategy='graft' only; strategy={strategy!r} takes "
                f"round(fraction * n) rows per batch. Got {nm}={value!r} instead."
            )
    if grads is None and REGISTRY[strategy].needs_grads:
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
