"""Dask adapter: GRAFT selection where the data lives, and a tournament MaxVol across workers.

Install with the ``[dask]`` extra (``dask[array]`` and ``distributed``). Importing
:mod:`graft_array` never imports dask; this module does.

* :func:`select_dask` runs :func:`graft_array.select` on every row chunk of a
  ``dask.array`` (Zarr, HDF5, memmaps behind ``dask.array.from_zarr`` /
  ``from_array``, or arrays computed on the workers), on the worker that holds
  the chunk, with the chunk's dataset offsets. Only indices, weights and sizes
  travel back (with GRAFT's default ``budget="call"`` also each batch's residual
  curve, ``max_size`` floats, see :func:`select_dask`). The result equals one
  :func:`graft_array.select` call over all the batches.
* :func:`maxvol_dask` selects k rows of a tall dask array by a tournament: each
  chunk's winners, then merges of ``split_every`` children at a time through
  ``dask.array.reduction`` (the pattern of dask's ``argtopk``); only candidate
  blocks (k x r) and their row ids travel.
* :func:`save_selection` / :func:`load_selection` write and read the selection
  as a small ``.npz``; :func:`selection_sampler` turns it into a torch
  ``Sampler`` that serves the subset as :class:`graft_array.adapters.torch.GraftEpochSampler`
  does (a fresh order per epoch, ``loss_weights``).
"""

import functools
import math
import os
import warnings
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np

from .. import _select
from .._maxvol import maxvol
from .._select import LastLayerGrads, select
from .._validation import (
    check_bool,
    check_int,
    check_option,
    check_random_state,
    check_real,
    generator_at,
)
from ..strategies import NAMES as _ALL_STRATEGIES

__all__ = ["SUPPORTED", "load_selection", "maxvol_dask", "save_selection", "select_dask", "selection_sampler"]

_FUNC = "select_dask"

#: the strategies select_dask runs (each equal to one select call over all the batches)
SUPPORTED = ("graft", "random", "craig", "gradmatch", "crest", "adacore", "mkdt", "pdd")
#: per source / latent group across the whole call: not decomposable by chunks
_UNSUPPORTED = tuple(s for s in _ALL_STRATEGIES if s not in SUPPORTED)


# ---------------------------------------------------------------------------------------------------------------
# Hooks into select's budget step (graft_array._select._CALL_HOOKS: thread-local, unset outside _run_select)
# ---------------------------------------------------------------------------------------------------------------
#
# With GRAFT's budget="call" one select call couples its batches only through ``_budget_sizes`` (the
# call's budget spread over the batches by their residual curves) and, for CREST, through
# ``_call_weights`` (weights rescaled to mean 1 over the call). Everything else is per batch. The hooks let a
# chunk's select call (a) hand its curves over and stop (phase 1), (b) use the sizes the global spread gave
# its batches (phase 3), (c) rescale CREST's weights by the whole call's count and rows. They are set on the
# calling thread only, around one select call (_run_select).


class _Captured(Exception):
    """Raised by the budget hook in phase 1 once the chunk's curves are recorded (nothing else is needed)."""


class _Curve(NamedTuple):
    """What ``_budget_sizes`` reads of a stack's result: criterion sizes, residual curves, gradient norms, band."""

    sizes: Any  # (B,) int64
    residuals: Any  # (B, hi) float64
    gnorm: Any  # None or (sqrt(gg) (B,), k (B,))
    lo: int
    hi: int


def _budget_hook(ctx, results, groups, budgets, opts):
    kind, payload = ctx
    if kind == "capture":
        for r in results:
            payload.append(_Curve(np.asarray(_select._host_array(r.sizes), dtype=np.int64),
                                  np.asarray(_select._host_array(r.residuals))[:, : r.hi], r.gnorm, r.lo, r.hi))
        raise _Captured
    lens = [len(g) for g in groups]  # "sizes": the chunk's final sizes, batch after batch (stacks in order)
    if sum(lens) != len(payload):
        raise RuntimeError(f"{_FUNC}: internal error, {len(payload)} sizes for {sum(lens)} batches.")
    return np.split(np.asarray(payload, dtype=np.int64), np.cumsum(lens)[:-1])


def _weights_hook(ctx, xp, wts, opts, rows):
    if opts["strategy"] != "crest" or wts.shape[0] == 0:
        return wts
    count, total_rows = ctx  # the whole call's selected rows and rows, as one select call scales them
    return wts * (count / total_rows)


def _run_select(args, kwargs, *, budget=None, weights=None):
    """select(*args, **kwargs) on this thread with select's call hooks set (and always cleared)."""
    hooks = _select._CALL_HOOKS
    hooks.budget_sizes = None if budget is None else functools.partial(_budget_hook, budget)
    hooks.call_weights = None if weights is None else functools.partial(_weights_hook, weights)
    try:
        return select(*args, **kwargs)
    finally:
        hooks.budget_sizes = hooks.call_weights = None


# ---------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------


def _type_name(x):
    t = type(x)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ not in ("builtins",) else t.__qualname__


def _check_dask(x, name, *, ndim, func=_FUNC):
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{func} expects '{name}' to be a dask.array.Array; got {_type_name(x)}. Wrap it with "
            f"dask.array.from_array({name}, chunks=(rows, -1)) (or read it with dask.array.from_zarr), or use "
            "graft_array.adapters.numpy.select_dataset for an in-memory array."
        )
    if x.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{func} expects '{name}' {want}; got shape {x.shape}.")
    if any(math.isnan(c) for cs in x.chunks for c in cs):
        raise ValueError(
            f"{func} expects '{name}' with known chunk sizes; got unknown (NaN) ones. Call "
            f"{name}.compute_chunk_sizes() first."
        )
    if x.ndim == 2 and len(x.chunks[1]) != 1:
        raise ValueError(
            f"{func} expects '{name}' in one chunk along its feature axis (each row whole on one worker); got "
            f"{len(x.chunks[1])} column chunks {x.chunks[1]}. Rechunk it with {name}.rechunk({{1: -1}})."
        )
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise ValueError(f"{func} expects '{name}' with real numbers; got dtype {x.dtype}.")
    if x.dtype.kind == "f" and x.dtype.itemsize > 8:
        raise ValueError(
            f"{func} expects '{name}' with dtype float16, float32 or float64; got dtype {x.dtype}. Extended "
            f"precision is not supported (and is not narrowed silently): cast with {name}.astype(numpy.float64)."
        )
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _aligned_chunks(n, rows, batch_size):
    """True when every row chunk but the last holds whole batches."""
    return all(c % batch_size == 0 for c in rows[:-1])


def _realign(arrays, names, batch_size):
    """Rechunk every row-aligned array to chunks of whole batches, with a warning that says what it costs."""
    rows = arrays[0].chunks[0]
    n = sum(rows)
    per = max(1, int(round(float(np.median(rows)) / batch_size))) * batch_size
    new = (per,) * (n // per) + ((n % per,) if n % per else ())
    moved = sum(a.dtype.itemsize * n * (a.shape[1] if a.ndim == 2 else 1) for a in arrays)
    bad = [i for i, c in enumerate(rows[:-1]) if c % batch_size][:3]
    warnings.warn(
        f"{_FUNC}: the row chunks of {', '.join(repr(nm) for nm in names)} do not hold whole batches of "
        f"batch_size={batch_size} (chunk {bad[0]} has {rows[bad[0]]} rows); rechunking them to {len(new)} chunks "
        f"of {per} rows. This costs a rechunk step in the graph: every chunk is copied once more "
        f"({moved / 2**20:.1f} MiB in all) and rows at each old chunk boundary are sent between workers; store "
        f"or load the data in chunks of a multiple of {batch_size} rows to avoid it.",
        stacklevel=3,
    )
    return [a.rechunk({0: new}) for a in arrays]


# ---------------------------------------------------------------------------------------------------------------
# select_dask
# ---------------------------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """Everything a chunk task needs besides its blocks (small, pickled into each task)."""

    batch_size: int
    names: tuple  # the block arguments' roles, in order: "features", "grads", "residuals", ...
    grads_kind: str  # "none", "plain" or "last_layer"
    kwargs: dict  # select's keyword arguments (fraction, strategy, budget, ...)
    rng_type: Any  # the bit generator class of random_state
    rng_state: dict  # its state before select's one draw


def _replay(plan):
    return generator_at(plan.rng_type, plan.rng_state)


def _batches(block_rows, batch_size):
    """[(start, stop)] of the batches in a chunk of block_rows rows (whole batches, then a ragged tail)."""
    full = block_rows // batch_size
    out = [(b * batch_size, (b + 1) * batch_size) for b in range(full)]
    if full * batch_size < block_rows:
        out.append((full * batch_size, block_rows))
    return out


def _chunk_args(plan, start, blocks):
    """select's (features, grads) and row-aligned keyword arguments for one chunk, and its offsets."""
    parts = dict(zip(plan.names, blocks))
    ref = next(b for b in blocks if b is not None)
    nrows = int(ref.shape[0])
    spans = _batches(nrows, plan.batch_size)
    stacked = spans[-1][1] - spans[-1][0] == plan.batch_size  # whole batches only: one (B, n, .) stack

    def cut(x):
        if x is None:
            return None
        if stacked:
            return x.reshape((len(spans), plan.batch_size) + tuple(x.shape[1:]))
        return [x[a:b] for a, b in spans]

    features = cut(parts.get("features"))
    if plan.grads_kind == "plain":
        grads = cut(parts["grads"])
    elif plan.grads_kind == "last_layer":
        grads = LastLayerGrads(cut(parts["residuals"]), cut(parts["embeddings"]))
    else:
        grads = None
    kw = dict(plan.kwargs)
    for nm in ("hessian_diag", "scores"):
        if nm in parts:
            kw[nm] = cut(parts[nm])
    offsets = start + np.asarray([a for a, _ in spans], dtype=np.int64)
    return (features, grads), dict(kw, offsets=offsets, return_info=True), len(spans)


def _host(a, dtype):
    return np.asarray(_select._host_array(a), dtype=dtype)


def _chunk_curves(plan, start, *blocks):
    """Phase 1 (GRAFT, budget="call"): the chunk's criterion sizes and residual curves (select stops there)."""
    args, kw, _ = _chunk_args(plan, start, blocks)
    curves = []
    try:
        _run_select(args, dict(kw, random_state=_replay(plan)), budget=("capture", curves))
    except _Captured:
        return curves
    raise RuntimeError(f"{_FUNC}: internal error, select did not reach its budget step.")


def _spread(plan, total, per_chunk, *curves_of_chunks):
    """Phase 2: the call's budget spread over every batch of every chunk, as one select call spreads it."""
    results = [c for chunk in curves_of_chunks for c in chunk]
    opts = dict(strategy="graft", budget=plan.kwargs["budget"])
    groups = [np.zeros(len(r.sizes), dtype=np.int64) for r in results]
    sizes = np.concatenate(_select._budget_sizes(results, groups, {0: total}, opts))
    return np.split(sizes, np.cumsum(per_chunk)[:-1])


class _BlockGraph:
    """One chunk's task graph, carried as data (dask does not look inside): a phase-3 task runs it itself."""

    def __init__(self, dsk, key):
        self.dsk, self.key = dsk, key

    def __dask_tokenize__(self):
        return ("graft-dask-block", str(self.key), len(self.dsk))

    def compute(self):
        from dask.local import get_sync

        return get_sync(self.dsk, self.key)


def _block_graphs(arr):
    """A :class:`_BlockGraph` per row chunk of ``arr`` (its optimised graph, culled to what the chunk needs)."""
    from dask.core import flatten, get_dependencies

    (opt,) = dask.optimize(arr)
    dsk = dict(opt.__dask_graph__())
    out = []
    for key in flatten(opt.__dask_keys__()):
        sub, todo = {}, [key]
        while todo:
            k = todo.pop()
            if k not in sub:
                sub[k] = dsk[k]
                todo.extend(get_dependencies(dsk, k))
        out.append(_BlockGraph(sub, key))
    return out


def _chunk_select(plan, start, weights_ctx, sizes, *blocks):
    """One chunk's selection: select on its batches with their dataset offsets -> (indices, weights, sizes)."""
    blocks = [b.compute() if isinstance(b, _BlockGraph) else b for b in blocks]
    args, kw, nb = _chunk_args(plan, start, blocks)
    budget = None if sizes is None else ("sizes", sizes)
    s = _run_select(args, dict(kw, random_state=_replay(plan)), budget=budget, weights=weights_ctx)
    return _host(s.indices, np.int64), _host(s.weights, np.float64), _host(s.sizes, np.int64)


def _take(result, i):
    return result[i]


def select_dask(features, grads=None, *, batch_size=128, fraction=0.25, random_state=None, **select_kwargs):
    """GRAFT selection over a dask array, one :func:`graft_array.select` call per row chunk, on its worker.

    Each row chunk of ``features`` holds whole batches of ``batch_size``
    consecutive rows (the last chunk may end with a shorter batch: the
    dataset's ragged last batch). A task per chunk runs :func:`graft_array.select`
    on that chunk's batches with their dataset ``offsets``, where the chunk
    lives; only indices, weights and sizes come back. Nothing is computed
    until you compute the results; compute them together,
    ``dask.compute(indices, weights, sizes)``, so that the graph runs once.

    What equals what (exactly: the same indices, the same bits of the weights
    and sizes). The result equals ONE ``select`` call over all the dataset's
    batches: ``select(X.reshape(nb, batch_size, d), G..., fraction=fraction,
    random_state=random_state, **select_kwargs)`` when ``batch_size`` divides
    n, else ``select([X[0:b], X[b:2b], ..., X[(nb-1)b:n]], ...)`` (a list, the
    last batch short), with ``return_info=True``: ``indices`` equal
    ``Selection.indices`` (dataset row numbers), ``weights`` equal
    ``Selection.weights``, ``sizes`` equal ``Selection.sizes``. This holds for
    every chunking of the rows (any number of whole batches per chunk), any
    dask scheduler (synchronous, threads, processes, distributed), any
    ``random_state`` (one seed is drawn from it on the client, as select
    draws it, and every chunk's select call replays that draw; a Generator
    moves on by that one draw), and for the strategies in :data:`SUPPORTED`:

    * ``"graft"`` with ``budget="batch"``, or without ``grads``: one task per
      chunk (each batch is selected on its own).
    * ``"graft"`` with ``grads`` and ``budget="call"`` (the default) or an int
      budget: select spreads the call's budget over all its batches by their
      residual curves. This runs in three phases: (1) per chunk, select up to
      its budget step, returning each batch's criterion size and residual
      curve (``max_size`` float64 per batch) and gradient norm; (2) one task
      spreads the call's budget over every batch, with select's own routine;
      (3) per chunk, select again with those sizes. Phase 3 reads its
      chunk's blocks a second time, inside its own task (from storage, or
      by recomputing what produced them), so that no worker holds chunks
      between the phases: memory per worker stays one chunk's working set.
      Phase 3 repeats phase 1's work: the pass costs about twice the
      one-phase pass (``persist()`` the inputs first if they are expensive
      to produce and fit in the cluster's memory).
    * ``"random"``, ``"craig"``, ``"gradmatch"`` (per batch), ``"crest"``
      (per batch, its weights rescaled to mean 1 over the whole call, with
      the call's count and rows), ``"adacore"`` (``hessian_diag="softmax"``
      or a dask array laid out like the gradients, ``grads.residuals`` for
      LastLayerGrads), ``"mkdt"`` / ``"pdd"`` (``scores``: a dask array
      (n,)).

    Not supported, with a ValueError: ``labels``, ``groups``, ``sources``
    and the strategies ``"colm"``, ``"sas"`` and ``"clipcov"``. One select
    call runs those per class (source, latent group) over all the call's
    rows, cut into new chunks across the dataset; equality would need a
    shuffle of every row by class. Use
    :func:`graft_array.adapters.numpy.select_dataset` (per call) for them.

    Parameters
    ----------
    features : dask.array.Array (n_samples, n_features), or None
        Real numbers (integers are cast to float64). The feature axis must be
        one chunk. ``None``: select on the gradients (select's
        ``features=None``) or, for ``"mkdt"`` / ``"pdd"``, on the scores.
    grads : None, dask.array.Array (n_samples, p), or :class:`graft_array.LastLayerGrads`
        of two dask arrays (residuals (n_samples, C), embeddings (n_samples, h)),
        with the same row chunks as ``features``.
    batch_size : int, default=128
        Rows per GRAFT batch. Row chunks that do not hold whole batches are
        rechunked (every input; a warning says what it costs).
    fraction : float in (0, 1], default=0.25
        select's ``fraction``.
    random_state : None, non-negative int or numpy.random.Generator
    **select_kwargs
        Passed to :func:`graft_array.select` (strategy, budget, rank, method,
        tol, band, weight_reg, gradmatch_lambda, min_size, max_size, solver,
        strategy_params, backend, and the dask arrays ``hessian_diag`` /
        ``scores``). ``offsets``, ``mask`` and ``return_info`` are set here.

    Returns
    -------
    indices : dask.array.Array of int64 (n_selected,), unknown chunk sizes
        Dataset row numbers, batch after batch, each batch in selection order.
    weights : dask.array.Array of float64 (n_selected,), unknown chunk sizes
    sizes : dask.array.Array of int64 (n_batches,), unknown chunk sizes
        Rows chosen in each batch.
    """
    for bad in ("offsets", "return_info", "mask"):
        if bad in select_kwargs:
            raise TypeError(f"{_FUNC} sets '{bad}' itself; do not pass it.")
    strategy = check_option(select_kwargs.get("strategy", "graft"), "strategy", _FUNC, _ALL_STRATEGIES)
    if strategy in _UNSUPPORTED:
        raise ValueError(
            f"{_FUNC} supports strategy in {SUPPORTED}; got strategy={strategy!r}, which one select call runs per "
            "source / latent group across all its rows (its groups span every chunk), so one select call per "
            "chunk cannot equal it. Use graft_array.adapters.numpy.select_dataset for it."
        )
    for nm in ("labels", "groups", "sources"):
        if select_kwargs.get(nm) is not None:
            raise ValueError(
                f"{_FUNC} does not support '{nm}': one select call selects per class over all its rows, cut "
                "into new chunks across the dataset, which one select call per chunk cannot equal. Supported: "
                f"strategy in {SUPPORTED} without labels; use graft_array.adapters.numpy.select_dataset "
                "(class-balanced per call) for labels."
            )
        select_kwargs.pop(nm, None)
    batch_size = check_int(batch_size, "batch_size", _FUNC, low=1)
    fraction = check_real(fraction, "fraction", _FUNC, low=0.0, high=1.0, low_inclusive=False)
    budget = _select._check_budget(select_kwargs.pop("budget", "call"))

    arrays, names = [], []
    if features is not None:
        arrays.append(_check_dask(features, "features", ndim=(2,)))
        names.append("features")
    if isinstance(grads, LastLayerGrads):
        grads_kind = "last_layer"
        for part, nm in zip(grads, ("residuals", "embeddings")):
            arrays.append(_check_dask(part, f"grads.{nm}", ndim=(2,)))
            names.append(nm)
    elif grads is not None:
        grads_kind = "plain"
        arrays.append(_check_dask(grads, "grads", ndim=(2,)))
        names.append("grads")
    else:
        grads_kind = "none"
    for nm in ("hessian_diag", "scores"):
        value = select_kwargs.pop(nm, None)
        if value is None or isinstance(value, str):
            if value is not None:
                select_kwargs[nm] = value  # hessian_diag="softmax"
            continue
        arrays.append(_check_dask(value, nm, ndim=(2,) if nm == "hessian_diag" else (1,)))
        names.append(nm)
    if not arrays:
        raise ValueError(f"{_FUNC} expects 'features' or 'grads' (dask arrays); got neither.")
    label = {"residuals": "grads.residuals", "embeddings": "grads.embeddings"}
    labels_of = [label.get(nm, nm) for nm in names]
    n, rows = arrays[0].shape[0], arrays[0].chunks[0]
    if n == 0:
        raise ValueError(f"{_FUNC} expects '{labels_of[0]}' with at least one row; got 0 rows.")
    for a, nm in zip(arrays[1:], labels_of[1:]):
        if a.shape[0] != n:
            raise ValueError(f"{_FUNC} expects '{nm}' to have one row per row of '{labels_of[0]}' ({n}); got "
                             f"{a.shape[0]}.")
        if a.chunks[0] != rows:
            raise ValueError(
                f"{_FUNC} expects '{nm}' chunked like '{labels_of[0]}' along the rows (each chunk's rows on one "
                f"worker); got row chunks {_short(a.chunks[0])} against {_short(rows)}. Rechunk it with "
                f"{nm}.rechunk({{0: {labels_of[0]}.chunks[0]}})."
            )
    if not _aligned_chunks(n, rows, batch_size):
        arrays = _realign(arrays, labels_of, batch_size)
        rows = arrays[0].chunks[0]

    rng = check_random_state(random_state, "random_state", _FUNC)
    state = rng.bit_generator.state
    rng.integers(2**63)  # the caller's generator moves on as after one select call
    kwargs = dict(select_kwargs, fraction=fraction, budget=budget)
    plan = _Plan(batch_size, tuple(names), grads_kind, kwargs, type(rng.bit_generator), state)

    starts_all = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    keep = [i for i, c in enumerate(rows) if c]  # empty chunks (e.g. after slicing) hold no batch
    starts = starts_all[keep]
    nbatches = [len(_batches(int(rows[i]), batch_size)) for i in keep]
    blocks = [a.to_delayed().ravel()[keep] for a in arrays]  # one Delayed per (non-empty) row chunk
    nchunks = len(keep)

    weights_ctx = None
    if strategy == "crest":  # mean 1 over the call: the call's count (round(fraction * n_b) per batch) and rows
        lengths = [b - a for c in rows for a, b in _batches(int(c), batch_size)]
        weights_ctx = (sum(min(m, max(1, int(round(fraction * m)))) for m in lengths), int(n))

    two_phase = strategy == "graft" and grads_kind != "none" and budget != "batch"
    call = dask.delayed(_chunk_select, pure=True)
    if two_phase:
        curves = [dask.delayed(_chunk_curves, pure=True)(plan, int(starts[i]), *(b[i] for b in blocks))
                  for i in range(nchunks)]
        total = _select._call_budget(dict(budget=budget, fraction=fraction), int(n))
        spread = dask.delayed(_spread, pure=True)(plan, total, nbatches, *curves)
        # phase 3 reads its blocks anew, inside its own task (after the spread): no worker holds its chunks
        # between the phases
        blocks3 = [[g for i, g in enumerate(_block_graphs(a)) if rows[i]] for a in arrays]
        parts = [call(plan, int(starts[i]), weights_ctx, dask.delayed(_take, pure=True)(spread, i),
                      *(b[i] for b in blocks3)) for i in range(nchunks)]
    else:
        parts = [call(plan, int(starts[i]), weights_ctx, None, *(b[i] for b in blocks)) for i in range(nchunks)]

    take = dask.delayed(_take, pure=True)
    outs = []
    for j, dt in enumerate((np.int64, np.float64, np.int64)):
        pieces = [da.from_delayed(take(p, j), shape=(np.nan,), dtype=dt, meta=np.empty((0,), dtype=dt))
                  for p in parts]
        outs.append(da.concatenate(pieces) if len(pieces) > 1 else pieces[0])
    return tuple(outs)


def _short(chunks):
    return str(chunks) if len(chunks) <= 6 else f"({', '.join(map(str, chunks[:3]))}, ..., {chunks[-1]})"


# ---------------------------------------------------------------------------------------------------------------
# maxvol_dask: tournament over chunks
# ---------------------------------------------------------------------------------------------------------------

_MV = "maxvol_dask"


def _mv_pair(block, ids):
    return block, np.asarray(ids, dtype=np.int64).ravel()


def _mv_candidates(pairs):
    """(rows, ids) of a node's children, stacked and sorted by row id (ties then go to the lowest row)."""
    if isinstance(pairs, tuple):
        return pairs
    flat, stack = [], list(pairs)
    while stack:  # flatten nested lists, keeping order
        p = stack.pop(0)
        if isinstance(p, list):
            stack[:0] = p
        else:
            flat.append(p)
    rows = np.concatenate([p[0] for p in flat], axis=0)
    ids = np.concatenate([p[1] for p in flat])
    order = np.argsort(ids, kind="stable")
    return rows[order], ids[order]


def _mv_level(rows, ids, k, T, method):
    """One tournament level: MaxVol on consecutive tiles of T candidates, k winners each (all of a tile of <= k)."""
    m = rows.shape[0]
    full = m // T
    picks = []
    if full:
        piv = np.asarray(maxvol(rows[: full * T].reshape(full, T, rows.shape[1]), k, method=method))
        picks.append((piv + (np.arange(full, dtype=np.int64) * T)[:, None]).ravel())
    if m > full * T:
        rest = m - full * T
        tail = np.arange(rest) if rest <= k else np.asarray(maxvol(rows[full * T:], k, method=method))
        picks.append(tail + full * T)
    sel = np.sort(np.concatenate(picks))  # each tile's winners ascending, tile after tile
    return rows[sel], ids[sel]


def _mv_leaf(pair, axis=None, keepdims=None, *, k, T, method):
    rows, ids = _mv_candidates(pair)
    return _mv_level(rows, ids, k, T, method) if rows.shape[0] > k else (rows, ids)


def _mv_merge(pairs, axis=None, keepdims=None, *, k, T, method):
    rows, ids = _mv_candidates(pairs)
    while rows.shape[0] > T:  # a next level only when the pool outgrows a tile, as the single-machine one
        rows, ids = _mv_level(rows, ids, k, T, method)
    return rows, ids


def _mv_final(pairs, axis=None, keepdims=None, *, k, T, method):
    rows, ids = _mv_merge(pairs, k=k, T=T, method=method)
    return ids[np.asarray(maxvol(rows, k, method=method))]


def maxvol_dask(V, k, *, method="tournament", split_every=None, tile_rows=None):
    """k rows of a tall dask array V (n, r) that span its columns well, by a tournament across its chunks.

    The tournament of ``graft_array.maxvol(V, k, method="tournament")``, with
    its levels spread over the workers through
    ``dask.array.reduction(..., split_every=split_every)`` (the pattern of
    dask's ``argtopk``):

    1. each row chunk (on its worker): MaxVol on its tiles of ``tile_rows``
       rows (one batched call), k winners per tile, kept with their dataset
       row ids;
    2. merges of ``split_every`` children: their winners stacked in row-id
       order; while the pool has more than ``tile_rows`` rows, another level
       of tiles (k winners per tile);
    3. the last merge: MaxVol on the pool, k rows in its selection order.

    The MaxVol of the tiles and of the pool is ``"deim"`` for
    ``method="tournament"`` (as the single-machine tournament) and greedy
    ``"volume"`` for ``method="volume"``; k > r extends each pick by the
    rectangular rule (a tournament of it: not the single-machine extension,
    which passes over every row). Only k x r blocks of winners (k per tile)
    and their row ids travel between workers: k / tile_rows of the data
    (0.4% with the default tiles for k = 32 on 1e6 rows), then less at each
    merge. Depth: ceil(log_split_every(number of chunks)) merges.

    Equal to the single-machine tournament (the same rows, in the same
    order, on full-rank data) when every chunk but the last holds a
    multiple of ``tile_rows`` rows and the first level's winners fit one
    tile (n k / tile_rows <= tile_rows, true for n up to about tile_rows^2 / k:
    3e7 rows at k = 32), and close to it otherwise (the pools are cut into
    tiles by merge node, not across the whole candidate list). Its
    log|det V[S, :k]| on Gaussian data is within about 2% of LU's
    (``scipy.linalg.lu_factor``'s pivots) at n >= 1e6, like the
    single-machine tournament's. (A float32 V of more than about 1/eps =
    8.4e6 rows makes the single-machine tournament's tolerance
    max(n, r) eps max|V| refuse every pivot: it warns "numerical rank 0" and
    fills with the rows of largest norm. Each call here sees one chunk or
    one pool, so maxvol_dask does not meet that.)

    Parameters
    ----------
    V : dask.array.Array (n, r), real, the columns in one chunk
    k : int, 1 <= k <= n
    method : {"tournament", "volume"}, default="tournament"
    split_every : None or int >= 2
        Children per merge. None: as many as fill one tile with their
        winners (``tile_rows // (k * tiles per chunk)``, at least 2), so that a
        merge stacks its children without a level of its own.
    tile_rows : None or int >= 2 * min(k, r)
        Rows per tile; None: the single-machine tournament's choice for n
        rows (the smallest power of two >= sqrt(min(k, r) n), clamped).

    Returns
    -------
    indices : dask.array.Array of int64 (k,)
        Unique dataset row numbers, in the last merge's selection order.
    """
    V = _check_dask(V, "V", ndim=(2,), func=_MV)
    n, r = V.shape
    k = check_int(k, "k", _MV, low=1, high=n)
    method = check_option(method, "method", _MV, tuple(_NODE))
    split_every = check_int(split_every, "split_every", _MV, low=2, allow_none=True)
    from functools import partial

    from .._common import default_tile_rows

    kk = min(k, r)
    T = check_int(tile_rows, "tile_rows", _MV, low=2 * kk, allow_none=True)
    T = max(default_tile_rows(n, kk) if T is None else T, k + 1)
    if split_every is None:  # as many children as fill one tile with their winners: merges rarely add levels
        leaf_rows = -(-max(V.chunks[0]) // T) * min(k, max(V.chunks[0]))
        split_every = max(2, T // max(1, leaf_rows))
    opts = dict(k=k, T=T, method=_NODE[method])
    ids = da.arange(n, chunks=(V.chunks[0],), dtype=np.int64)
    pairs = da.map_blocks(_mv_pair, V, ids[:, None], dtype=object, drop_axis=1, chunks=(V.chunks[0],),
                          meta=np.empty((0,), dtype=object))
    return da.reduction(
        pairs,
        chunk=partial(_mv_leaf, **opts),
        combine=partial(_mv_merge, **opts),
        aggregate=partial(_mv_final, **opts),
        axis=0,
        keepdims=True,
        dtype=np.int64,
        split_every=split_every,
        concatenate=False,
        output_size=k,
        meta=np.empty((0,), dtype=np.int64),
    )


#: the MaxVol of the tiles and of the last pool for each method of maxvol_dask
_NODE = {"tournament": "deim", "volume": "volume"}


# ---------------------------------------------------------------------------------------------------------------
# Storage and torch
# ---------------------------------------------------------------------------------------------------------------


def save_selection(path, indices, weights, *, n_samples=None):
    """Write a selection (dataset indices and their weights) to ``path`` as a small ``.npz``.

    ``indices`` / ``weights`` may be dask arrays (computed here, together) or
    array-likes. ``n_samples`` (the dataset's length) is stored when given.
    Returns the path written.
    """
    if isinstance(indices, da.Array) or isinstance(weights, da.Array):
        indices, weights = dask.compute(indices, weights)
    idx = np.asarray(indices)
    w = np.asarray(weights, dtype=np.float64)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"save_selection expects 'indices' as 1-D integers; got shape {idx.shape}, dtype {idx.dtype}.")
    if w.shape != idx.shape:
        raise ValueError(f"save_selection expects 'weights' aligned with 'indices' {idx.shape}; got {w.shape}.")
    n = -1 if n_samples is None else check_int(n_samples, "n_samples", "save_selection", low=0)
    path = os.fspath(path)
    with open(path, "wb") as f:  # exactly this path (np.savez would add .npz to a name without it)
        np.savez(f, indices=idx.astype(np.int64), weights=w, n_samples=np.int64(n))
    return path


def load_selection(path):
    """``(indices int64, weights float64)`` written by :func:`save_selection`."""
    with np.load(os.fspath(path)) as z:
        return z["indices"].astype(np.int64), z["weights"].astype(np.float64)


def _load_n(path):
    with np.load(os.fspath(path)) as z:
        n = int(z["n_samples"]) if "n_samples" in z else -1
    return None if n < 0 else n


def selection_sampler(selection, n_samples=None, *, shuffle=True, seed=0):
    """A torch ``Sampler`` over a saved selection, used in a training loop like ``GraftEpochSampler``.

    ``selection``: a path written by :func:`save_selection`, or ``(indices,
    weights)``. It yields the selected dataset indices, reshuffled each epoch
    (``set_epoch(epoch)``; order from ``torch.Generator`` seeded ``seed +
    epoch``, as GraftEpochSampler), and has ``indices``, ``weights`` (by
    dataset index, zero elsewhere) and ``loss_weights(index)`` (normalised to
    mean 1 over the subset, so ``(loss_weights(index) * losses).mean()``
    estimates the dataset's mean loss). ``n_samples``: the dataset's length
    (default: stored with the selection, else 1 + the largest index). Pass it
    as ``DataLoader(dataset, sampler=..., batch_size=...)`` with
    :class:`graft_array.adapters.torch.IndexedDataset` to get the indices.
    """
    import torch

    if isinstance(selection, (str, os.PathLike)):
        n_stored = _load_n(selection)
        idx, w = load_selection(selection)
        n_samples = n_stored if n_samples is None else n_samples
    else:
        idx, w = (np.asarray(a) for a in dask.compute(*selection))
        idx, w = idx.astype(np.int64), w.astype(np.float64)
    if n_samples is None:
        n_samples = int(idx.max()) + 1 if idx.size else 0
    n_samples = check_int(n_samples, "n_samples", "selection_sampler", low=int(idx.max()) + 1 if idx.size else 0)
    shuffle = check_bool(shuffle, "shuffle", "selection_sampler")
    return _sampler_class(torch)(idx, w, n_samples, shuffle, int(seed))


_SAMPLER = []


def _sampler_class(torch):
    if _SAMPLER:
        return _SAMPLER[0]

    class SelectionSampler(torch.utils.data.Sampler):
        """The subset of a saved selection, a fresh order each epoch (see :func:`selection_sampler`)."""

        def __init__(self, idx, w, n, shuffle, seed):
            self.indices = torch.as_tensor(idx, dtype=torch.int64)
            full = torch.zeros(n, dtype=torch.float32)
            full[self.indices] = torch.as_tensor(w, dtype=torch.float32)
            self.weights = full
            self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

        def set_epoch(self, epoch):
            self.epoch = int(epoch)

        def loss_weights(self, index):
            index = torch.as_tensor(index, dtype=torch.int64)
            return (self.weights * (len(self.indices) / self.n)).to(index.device)[index]

        def __iter__(self):
            idx = self.indices
            if self.shuffle:
                g = torch.Generator()
                g.manual_seed(self.seed + self.epoch)
                idx = idx[torch.randperm(len(idx), generator=g)]
            return iter(idx.tolist())

        def __len__(self):
            return len(self.indices)

    _SAMPLER.append(SelectionSampler)
    return SelectionSampler
