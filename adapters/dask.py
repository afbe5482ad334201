"""Dask adapter: GRAFT selection where the data lives, and a tournament MaxVol across workers.

Install with the ``[dask]`` extra (``dask[array]`` and ``distributed``). Importing
:mod:`graft_array` never imports dask; this module does.

* :func:`select_dask` runs :func:`graft_array.select` on every row chunk of a
  ``dask.array`` (Zarr, HDF5, memmaps behind ``dask.array.from_zarr`` /
  ``from_array``, or arrays computed on the workers), on the worker that holds
  the chunk, with the chunk's dataset offsets. Only indices, weights and sizes
  travel back (with GRAFT's default ``budget="call"`` also each batch's residual
  curve, ``max_size`` floats, see :func:`select_dask`). The result equals one
  :func:`graft_array.select` call over all the batches. With ``labels`` (class-
  balanced selection; ``groups`` for SAS / ClipCov) the rows meet by class
  chunk in one shuffle, worker to worker (every row moves once; the client
  only sees the labels' class counts per chunk), and the result still equals
  one labelled select call. CoLM (``sources``) runs the same way with whole
  sources per task; it is computed when :func:`select_dask` is called, and
  the caller's ``ColmState`` moves on the client as under one select call.
* :func:`maxvol_dask` selects k rows of a tall dask array by a tournament: each
  chunk's winners, then merges of ``split_every`` children at a time through
  ``dask.array.reduction`` (the pattern of dask's ``argtopk``); only candidate
  blocks (k x r) and their row ids travel.
* :func:`save_selection` / :func:`load_selection` write and read the selection:
  a small ``.npz`` gathered on the client, or (``per_chunk=True``) one part
  per block written by the worker that computed it, with a manifest, so that
  nothing is gathered and worker memory does not grow with the dataset;
  :func:`selection_sampler` turns it into a torch
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

__all__ = [
    "GROUPED", "SOURCED", "SUPPORTED", "load_selection", "maxvol_dask", "save_selection", "select_dask",
    "selection_sampler",
]

_FUNC = "select_dask"

#: the strategies select_dask runs, with or without ``labels`` (each equal to one select call over all the batches)
SUPPORTED = ("graft", "random", "craig", "gradmatch", "crest", "adacore", "mkdt", "pdd")
#: the strategies whose tasks take whole latent groups (``groups``, default: select's k-means of all the rows)
GROUPED = ("sas", "clipcov")
#: the strategies select_dask runs with ``sources`` only (CoLM: whole sources per task, its ColmState updated on the
#: client; computed when select_dask is called)
SOURCED = ("colm",)
_UNSUPPORTED = tuple(s for s in _ALL_STRATEGIES if s not in SUPPORTED + GROUPED + SOURCED)


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


def _check_class_ids(x, name, n, rows, ref):
    """``labels`` / ``groups``: a 1-D integer dask array, one id per row, chunked like the data's rows."""
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{_FUNC} expects '{name}' to be a dask.array.Array of one int id per row, chunked like '{ref}'; got "
            f"{_type_name(x)}. Wrap it with dask.array.from_array({name}, chunks=({ref}.chunks[0],))."
        )
    if x.ndim != 1:
        raise ValueError(f"{_FUNC} expects '{name}' 1-D (one int id per row); got shape {x.shape}.")
    if x.dtype == np.bool_ or x.dtype.kind not in "iu":
        raise ValueError(f"{_FUNC} expects '{name}' with integer ids (class labels or strata); got dtype {x.dtype}.")
    if any(math.isnan(c) for c in x.chunks[0]):
        raise ValueError(f"{_FUNC} expects '{name}' with known chunk sizes; got unknown (NaN) ones. Call "
                         f"{name}.compute_chunk_sizes() first.")
    if x.shape[0] != n:
        raise ValueError(f"{_FUNC} expects '{name}' to have one id per row of '{ref}' ({n}); got {x.shape[0]}.")
    if x.chunks[0] != rows:
        raise ValueError(
            f"{_FUNC} expects '{name}' chunked like '{ref}' along the rows (each chunk's ids beside its rows); got "
            f"row chunks {_short(x.chunks[0])} against {_short(rows)}. Rechunk it with "
            f"{name}.rechunk({{0: {ref}.chunks[0]}})."
        )


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
    colm: Any = None  # strategy="colm": (the caller's strategy_params, the state's (m, v, t) at the call, gather)


def _replay(plan):
    return generator_at(plan.rng_type, plan.rng_state)


def _batches(block_rows, batch_size):
    """[(start, stop)] of the batches in a chunk of block_rows rows (whole batches, then a ragged tail)."""
    full = block_rows // batch_size
    out = [(b * batch_size, (b + 1) * batch_size) for b in range(full)]
    if full * batch_size < block_rows:
        out.append((full * batch_size, block_rows))
    return out


def _select_args(plan, parts, cut):
    """select's (features, grads) and keyword arguments from the blocks by role (``cut`` lays each out)."""
    if "text" in parts:  # clipcov: the pair (image_emb, text_emb)
        features = (cut(parts["features"]), cut(parts["text"]))
    else:
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
    return (features, grads), kw


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

    args, kw = _select_args(plan, parts, cut)
    offsets = start + np.asarray([a for a, _ in spans], dtype=np.int64)
    return args, dict(kw, offsets=offsets, return_info=True), len(spans)


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
    """A :class:`_BlockGraph` per row chunk of ``arr`` (its optimised graph, culled to what the chunk needs).

    A chunk whose graph reaches data the cluster already holds (a persisted array: its keys are futures) is
    passed as its Delayed instead: it is read where it lives, and it stays in memory between the phases anyway.
    """
    from dask.core import flatten, get_dependencies

    (opt,) = dask.optimize(arr)
    dsk = dict(opt.__dask_graph__())
    delayed = arr.to_delayed().ravel()
    out = []
    for key, blk in zip(flatten(opt.__dask_keys__()), delayed):
        sub, todo = {}, [key]
        while todo:
            k = todo.pop()
            if k not in sub:
                if k not in dsk:  # held by the cluster (a future): not recomputable inside a task
                    sub = None
                    break
                sub[k] = dsk[k]
                todo.extend(get_dependencies(dsk, k))
        out.append(blk if sub is None else _BlockGraph(sub, key))
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


# ---------------------------------------------------------------------------------------------------------------
# Labels: class chunks gathered by one shuffle
# ---------------------------------------------------------------------------------------------------------------
#
# With ``labels`` one select call concatenates all its rows and, for each class c (np.unique order), cuts the
# class's rows (in row order) into np.array_split(rows_c, ceil(n_c / width)) chunks (width: its largest batch),
# each selected with the class's share k_c / n_c, k_c = min(n_c, max(1, ceil(total n_c / N))), GRAFT's sizes
# spread per class ({c: k_c}), CREST's weights over the call (_select._select_labelled, _select_lists).
#
# Here the client reduces the labels to class counts per dask chunk (_label_counts). Their prefix sums give
# every row's rank within its class, hence its class chunk, hence its group (consecutive class chunks of about
# one dask chunk's rows). A split task per dask chunk cuts the chunk's rows by group; a group task gathers its
# pieces (rows in row order within each class chunk) and runs one select call per class on its chunks of that
# class: a list of batches at their first rows' offsets (the labelled call's seeds of "random" and of
# GradMatch's filling) with fraction=k_c / n_c, which is exactly what the labelled call runs on them; only the
# budget step (GRAFT) and CREST's call weights couple the chunks, through the hooks above. "sas" / "clipcov"
# get their groups as select's ``groups`` and so cannot take a part of a group: their tasks take whole groups
# (one call per group with budget=k_c, which cuts and shares it exactly as the labelled call). "colm" takes whole
# sources the same way (its per-source top coordinates read all the source's rows), with CoLM's quotas
# (colm.budgets over all the sources) and small_sources="auto" in each call, which then keeps k_c; each call gets
# its own copy of the state's moments, and the client moves the caller's ColmState from the selected rows'
# gradients the tasks return (_colm_update), so the whole colm pass is computed inside select_dask.


class _ClassLayout(NamedTuple):
    """Where each row of a class goes (small: per class, per group; shared by every split task)."""

    classes: Any  # (K,) int64, np.unique order
    counts: Any  # (K,) n_c
    nparts: Any  # (K,) its class chunks, ceil(n_c / width)
    base: Any  # (K,) the global id of its first class chunk
    gstart: Any  # (G + 1,) the first class chunk of each group, then the number of class chunks


class _GroupSpec(NamedTuple):
    """One group task's class chunks (consecutive global ids from ``first``)."""

    first: int
    lengths: Any  # (m,) rows of each class chunk
    labels: Any  # (m,) its class
    fractions: tuple  # (m,) its share k_c / n_c (Python floats, as select computes them)
    quotas: tuple  # (m,) its class's k_c
    whole: bool  # "sas" / "clipcov": whole classes, their groups passed to select


def _label_counts(block):
    """(classes, counts) of one dask chunk's labels (int64, as select reads them)."""
    return np.unique(np.asarray(block).astype(np.int64, copy=False), return_counts=True)


def _chunk_of_rank(rank, n, parts):
    """The class chunk (within its class) of the row of class rank ``rank``: np.array_split(n rows, parts)."""
    size, extra = n // parts, n % parts  # the first ``extra`` chunks hold size + 1 rows
    big = extra * (size + 1)
    return np.where(rank < big, rank // (size + 1), extra + (rank - big) // np.maximum(size, 1))


def _fixed_size(m, fraction):
    """The rows a fixed-size strategy takes of a batch of m rows at ``fraction`` (select's band, band=0)."""
    return _select._band(m, m, dict(rank=None, band=0.0), None, None, fraction)[1]


def _class_plan(hists, n, width, total, target, whole, quotas=None):
    """The call's class chunks and groups from the chunks' class counts (the client's part of the shuffle).

    ``quotas``: None (each class's ``class_quota``) or a function (classes, counts, total) -> {class: k_c}
    (CoLM's ``budgets``).

    Returns (layout, per dask chunk (class ids, their prefix counts), specs of the groups, for each group the
    dask chunks that hold its rows, budgets {c: k_c}, the chunks' (lengths, fractions, labels)).
    """
    classes = np.unique(np.concatenate([h[0] for h in hists])) if hists else np.zeros(0, dtype=np.int64)
    counts = np.zeros(classes.shape[0], dtype=np.int64)
    where = []
    for vals, cnt in hists:  # chunk after chunk: each class's rows in the chunks before this one
        idx = np.searchsorted(classes, vals)
        where.append((idx, counts[idx].copy(), cnt))
        counts[idx] += cnt
    nparts = -(-counts // width)
    base = np.cumsum(nparts) - nparts
    nchunks = int(nparts.sum())
    if quotas is None:
        quota = [_select.class_quota(total, c, n) for c in counts.tolist()]
    else:
        given = quotas(classes, counts, total)
        quota = [int(given[c]) for c in classes.tolist()]
    frac = [k / c for k, c in zip(quota, counts.tolist())]
    cls = np.repeat(np.arange(classes.shape[0]), nparts)
    local = np.arange(nchunks) - base[cls]
    lengths = counts[cls] // nparts[cls] + (local < counts[cls] % nparts[cls])
    if whole:  # a group of whole classes
        cstart = (np.cumsum(counts) - counts)[cls]
    else:
        cstart = np.cumsum(lengths) - lengths
    gid = cstart // target
    gstart = np.concatenate([[0], np.flatnonzero(np.diff(gid)) + 1, [nchunks]]).astype(np.int64)
    layout = _ClassLayout(classes, counts, nparts, base, gstart)
    ngroups = len(gstart) - 1
    sources = [[] for _ in range(ngroups)]
    for i, (idx, pre, cnt) in enumerate(where):
        if not cnt.size:
            continue
        lo = base[idx] + _chunk_of_rank(pre, counts[idx], nparts[idx])
        hi = base[idx] + _chunk_of_rank(pre + cnt - 1, counts[idx], nparts[idx])
        mark = np.zeros(ngroups + 1, dtype=np.int64)
        np.add.at(mark, np.searchsorted(gstart, lo, "right") - 1, 1)
        np.add.at(mark, np.searchsorted(gstart, hi, "right"), -1)
        for g in np.flatnonzero(np.cumsum(mark)[:ngroups] > 0):
            sources[g].append(i)
    specs = []
    for g in range(ngroups):
        a, b = int(gstart[g]), int(gstart[g + 1])
        specs.append(_GroupSpec(a, lengths[a:b], classes[cls[a:b]], tuple(frac[c] for c in cls[a:b]),
                                tuple(quota[c] for c in cls[a:b]), whole))
    budgets = {int(c): k for c, k in zip(classes.tolist(), quota)}
    chunks = (lengths, [frac[c] for c in cls], classes[cls])
    return layout, [(idx, pre) for idx, pre, _ in where], specs, sources, budgets, chunks


def _materialise(block):
    return block.compute() if isinstance(block, _BlockGraph) else block


def _split(layout, start, cls_idx, pre, after, lab, *blocks):
    """One dask chunk's rows cut by group: {group: (row ids, class chunk ids, each block's rows)}.

    ``cls_idx`` / ``pre``: the chunk's classes (ids into ``layout.classes``) and each one's rows in the chunks
    before it; ``after`` only orders the task (phase 3 after the spread). Rows keep their order in each piece.
    """
    lab = np.asarray(_materialise(lab)).astype(np.int64, copy=False)
    blocks = [np.asarray(_materialise(b)) for b in blocks]
    ci = np.searchsorted(layout.classes, lab)
    at = np.searchsorted(cls_idx, ci)
    if lab.size and (at.max() >= len(cls_idx) or np.any(cls_idx[np.minimum(at, len(cls_idx) - 1)] != ci)):
        raise RuntimeError(f"{_FUNC}: the labels of the chunk at row {start} differ from those counted when "
                           "select_dask was called; the labels must be deterministic (persist() them).")
    order = np.argsort(ci, kind="stable")
    sci = ci[order]
    rank = np.empty(lab.shape[0], dtype=np.int64)
    rank[order] = np.arange(lab.shape[0]) - np.searchsorted(sci, sci, "left")  # rank within the chunk's class
    rank += pre[at]
    chunk = layout.base[ci] + _chunk_of_rank(rank, layout.counts[ci], layout.nparts[ci])
    group = np.searchsorted(layout.gstart, chunk, "right") - 1
    by = np.argsort(group, kind="stable")
    gs, first = np.unique(group[by], return_index=True)
    out = {}
    for g, rows in zip(gs.tolist(), np.split(by, first[1:])):
        out[g] = (start + rows, chunk[rows], *(b[rows] for b in blocks))
    return out


def _piece(split, g):
    return split.get(g)


def _gather(spec, nblocks, pieces):
    """A group's class chunks: (row ids of each chunk, ascending; each block's rows of each chunk)."""
    pieces = [p for p in pieces if p is not None]
    rows = np.concatenate([p[0] for p in pieces])
    ids = np.concatenate([p[1] for p in pieces]) - spec.first
    m = len(spec.lengths)
    got = np.bincount(ids, minlength=m)[:m] if ids.size else np.zeros(m, dtype=np.int64)
    if ids.size and ids.max() >= m or np.any(got != spec.lengths):
        bad = int(np.flatnonzero(got != spec.lengths)[0]) if np.any(got != spec.lengths) else m - 1
        raise RuntimeError(
            f"{_FUNC}: class chunk {spec.first + bad} gathered {int(got[bad])} rows, expected "
            f"{int(spec.lengths[bad])}: the labels changed since select_dask counted them. They must give the same "
            "values each time they are computed (persist() them)."
        )
    order = np.lexsort((rows, ids))
    cuts = np.cumsum(spec.lengths)[:-1]
    data = [np.split(np.concatenate([p[2 + a] for p in pieces])[order], cuts) for a in range(nblocks)]
    return np.split(rows[order], cuts), data


def _segments(labels):
    """(start, stop) of the runs of equal consecutive labels."""
    cut = np.concatenate([[0], np.flatnonzero(np.diff(labels)) + 1, [len(labels)]])
    return list(zip(cut[:-1].tolist(), cut[1:].tolist()))


def _stacks(keys):
    """select's stacks of a list of batches (_select_lists): members by key, in order of first appearance."""
    out = {}
    for b, key in enumerate(keys):
        out.setdefault(key, []).append(b)
    return list(out.values())


def _class_call(plan, spec, a, b, rows, data):
    """select's arguments for the class chunks a:b of a group (one class): an unlabelled call on a list."""
    args, kw = _select_args(plan, {nm: [d[j] for j in range(a, b)] for nm, d in zip(plan.names, data)},
                            lambda x: x)
    offsets = np.asarray([int(rows[j][0]) for j in range(a, b)], dtype=np.int64)
    if spec.whole:  # the whole class: its rows as select's groups (sources), its quota as the call's budget
        label = int(spec.labels[a])
        ids = [np.full(len(rows[j]), label, dtype=np.int64) for j in range(a, b)]
        kw.update(budget=spec.quotas[a])
        if plan.colm is None:
            kw["groups"] = ids
        else:  # CoLM: one source; "auto" with budget=k_c keeps the call's quota k_c (small iff k_c = n_c)
            params, (m, v, t), _ = plan.colm
            state = None
            if m is not None or t:  # a copy per call: select's own update of it stays in this task
                state = _colm_state(m, v, t)
            kw.update(sources=ids, strategy_params=dict(params, small_sources="auto", state=state))
    else:
        kw["fraction"] = spec.fractions[a]
    return args, dict(kw, offsets=offsets, return_info=True, random_state=_replay(plan))


def _group_curves(plan, spec, *pieces):
    """Phase 1 with labels: each class chunk's (criterion size, residual curve, gradient norm, lo, hi)."""
    rows, data = _gather(spec, len(plan.names), pieces)
    records = []
    for a, b in _segments(spec.labels):
        args, kw = _class_call(plan, spec, a, b, rows, data)
        curves = []
        try:
            _run_select(args, kw, budget=("capture", curves))
        except _Captured:
            pass
        else:
            raise RuntimeError(f"{_FUNC}: internal error, select did not reach its budget step.")
        seg = [None] * (b - a)
        for cv, members in zip(curves, _stacks([len(rows[j]) for j in range(a, b)])):
            for j, m in enumerate(members):
                gn = None if cv.gnorm is None else tuple(np.asarray(v)[j: j + 1] for v in cv.gnorm)
                seg[m] = (cv.sizes[j: j + 1], cv.residuals[j: j + 1], gn, cv.lo, cv.hi)
        records.extend(seg)
    return records


def _spread_classes(budget, budgets, chunks, *records_of_groups):
    """Phase 2 with labels: each class's quota spread over its chunks, as the labelled call spreads it."""
    lengths, fractions, labels = chunks
    records = [r for group in records_of_groups for r in group]  # every class chunk, in the call's order
    stacks = _stacks(list(zip(lengths.tolist(), fractions)))  # the labelled call's stacks: its tie order
    results = []
    for members in stacks:
        rs = [records[j] for j in members]
        gn = None if any(r[2] is None for r in rs) else tuple(np.concatenate([r[2][t] for r in rs]) for t in (0, 1))
        results.append(_Curve(np.concatenate([r[0] for r in rs]), np.concatenate([r[1] for r in rs]), gn,
                              rs[0][3], rs[0][4]))
    final = _select._budget_sizes(results, [labels[m] for m in stacks], budgets,
                                  dict(strategy="graft", budget=budget))
    out = np.empty(len(records), dtype=np.int64)
    for members, sizes in zip(stacks, final):
        out[members] = sizes
    return out


def _slice(sizes, a, b):
    return sizes[a:b]


def _group_select(plan, spec, weights_ctx, sizes, *pieces):
    """A group's selection: one select call per class on its class chunks -> (indices, weights, sizes)."""
    rows, data = _gather(spec, len(plan.names), pieces)
    out_i, out_w, out_s = [], [], []
    gather = plan.colm is not None and plan.colm[2]  # CoLM with a state: the selected rows' gradients too
    grads_at = [plan.names.index(nm) for nm in ("grads", "residuals", "embeddings") if nm in plan.names]
    out_g = [[] for _ in grads_at]
    for a, b in _segments(spec.labels):
        args, kw = _class_call(plan, spec, a, b, rows, data)
        budget = None
        if sizes is not None:  # phase 3: the sizes in the call's stack order
            stacks = _stacks([len(rows[j]) for j in range(a, b)])
            budget = ("sizes", [sizes[a + m] for members in stacks for m in members])
        s = _run_select(args, kw, budget=budget, weights=weights_ctx)
        idx, w, sz = _host(s.indices, np.int64), _host(s.weights, np.float64), _host(s.sizes, np.int64)
        if sz.shape[0] != b - a:
            raise RuntimeError(f"{_FUNC}: internal error, {sz.shape[0]} batches for {b - a} class chunks.")
        local = np.split(idx - np.repeat(kw["offsets"], sz), np.cumsum(sz)[:-1])  # rows within each chunk
        out_i.extend(rows[a + j][loc] for j, loc in enumerate(local))
        out_w.append(w)
        out_s.append(sz)
        if gather:
            for lst, at in zip(out_g, grads_at):
                lst.extend(data[at][a + j][loc] for j, loc in enumerate(local))
    out = np.concatenate(out_i), np.concatenate(out_w), np.concatenate(out_s)
    return out + (tuple(np.concatenate(lst) for lst in out_g),) if gather else out


def _colm_state(m, v, t):
    from ..strategies.colm import ColmState

    state = ColmState()
    state.m, state.v, state.t = m, v, t
    return state


def _colm_update(state, params, grads_kind, moments, parts):
    """The caller's ColmState moved as one select call's ``finish`` (strategies.colm.prepare) moves it.

    ``parts``: the selected rows' gradients (plain rows, or residuals and embeddings) in the call's selection
    order; ``moments``: the state's (m, v, t) when select_dask was called. The same routine as ``finish``
    on the same (k, p) explicit rows, so the same bits.
    """
    from .._namespace import array_namespace
    from ..strategies.colm import move_state

    m0, v0, t0 = moments
    k = int(parts[0].shape[0])
    if k == 0:
        return
    move_state(state, array_namespace(parts[0]), parts, grads_kind, np.arange(k), params["beta1"],
               params["beta2"], None if m0 is None else (m0, v0), t0 + 1)


def _select_classes(arrays, labels, plan, strategy, grads_kind, budget, fraction, rows, whole, quotas=None):
    """select_dask with labels: the pieces of the graph (see the section's comment)."""
    n = int(sum(rows))
    width = min(plan.batch_size, n)  # the largest batch of the call
    total = _select._call_budget(dict(budget=budget, fraction=fraction), n)
    lab_blocks = labels.to_delayed().ravel()
    hists = dask.compute(*[dask.delayed(_label_counts, pure=True)(b) for b in lab_blocks])
    target = max(max(rows), width)  # rows per group: about one dask chunk (a whole class for sas / clipcov)
    layout, where, specs, sources, budgets, chunks = _class_plan(hists, n, width, total, target, whole, quotas)
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)

    weights_ctx = None
    if strategy == "crest":  # mean 1 over the call: the call's count and rows
        weights_ctx = (sum(_fixed_size(int(m), f) for m, f in zip(chunks[0], chunks[1])), n)

    def shuffled(lab, blocks, after=None):
        split = {}
        for i in sorted({i for src in sources for i in src}):
            split[i] = dask.delayed(_split, pure=True)(layout, int(starts[i]), where[i][0], where[i][1], after,
                                                       lab[i], *(b[i] for b in blocks))
        piece = dask.delayed(_piece, pure=True)
        return [[piece(split[i], g) for i in sources[g]] for g in range(len(specs))]

    blocks = [a.to_delayed().ravel() for a in arrays]
    call = dask.delayed(_group_select, pure=True)
    two_phase = strategy == "graft" and grads_kind != "none" and budget != "batch"
    if two_phase:
        pieces = shuffled(lab_blocks, blocks)
        curves = [dask.delayed(_group_curves, pure=True)(plan, spec, *p) for spec, p in zip(specs, pieces)]
        spread = dask.delayed(_spread_classes, pure=True)(budget, budgets, chunks, *curves)
        # phase 3 reads the chunks anew inside its split tasks (after the spread) and shuffles them again: no
        # worker holds rows between the phases
        pieces = shuffled(_block_graphs(labels), [_block_graphs(a) for a in arrays], after=spread)
        slc = dask.delayed(_slice, pure=True)
        parts = [call(plan, spec, weights_ctx, slc(spread, spec.first, spec.first + len(spec.lengths)), *p)
                 for spec, p in zip(specs, pieces)]
    else:
        parts = [call(plan, spec, weights_ctx, None, *p) for spec, p in zip(specs, shuffled(lab_blocks, blocks))]
    return parts


def select_dask(features, grads=None, *, batch_size=128, fraction=0.25, random_state=None, **select_kwargs):
    """GRAFT selection over a dask array, one :func:`graft_array.select` call per row chunk, on its worker.

    Each row chunk of ``features`` holds whole batches of ``batch_size``
    consecutive rows (the last chunk may end with a shorter batch: the
    dataset's ragged last batch). A task per chunk runs :func:`graft_array.select`
    on that chunk's batches with their dataset ``offsets``, where the chunk
    lives; only indices, weights and sizes come back. Nothing is computed
    until you compute the results (``"colm"`` excepted, see below); compute them together,
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
      to produce and fit in the cluster's memory: a persisted chunk is read
      where the cluster holds it).
    * ``"random"``, ``"craig"``, ``"gradmatch"`` (per batch), ``"crest"``
      (per batch, its weights rescaled to mean 1 over the whole call, with
      the call's count and rows), ``"adacore"`` (``hessian_diag="softmax"``
      or a dask array laid out like the gradients, ``grads.residuals`` for
      LastLayerGrads), ``"mkdt"`` / ``"pdd"`` (``scores``: a dask array
      (n,)).

    Classes (``labels``, a dask array (n,) of ints chunked like the rows).
    The result equals one ``select(..., labels=<the labels cut like the
    batches>, return_info=True)`` call (indices, weights bits, sizes; ``sizes``
    then describe the class chunks, in select's order: classes in
    ``np.unique`` order, each class's chunks in row order; select's
    ``Selection.batch_labels`` is not returned), for every strategy in
    :data:`SUPPORTED`, every budget and ``random_state``, and any row
    chunking: with labels the chunks need not hold whole batches (nothing
    is rechunked). Such a call cuts each class's rows, across the whole
    dataset, into chunks of at most ``min(batch_size, n)`` rows, so the rows
    must meet by class:

    1. on the client: the labels' class counts per dask chunk (computed when
       ``select_dask`` is called: the labels are read for it, on the
       workers, and only the counts come back). Their prefix sums place every row in its class chunk, and the
       class chunks in groups of consecutive ones of about one dask chunk's
       rows;
    2. a shuffle, worker to worker: a task per dask chunk cuts its rows (all
       the inputs' rows, with their row ids) by group, and a task per group
       gathers its pieces. Every row moves once; the graph holds up to
       (dask chunks) x (groups) pieces when every class is in every chunk,
       so keep the chunks in the hundreds;
    3. per group, one select call per class on its chunks of that class,
       with the class's share: only indices, weights and sizes come back.

    Memory per task: one dask chunk (split) or one group of class chunks.
    GRAFT with ``budget="call"`` runs the three phases above over the
    groups; phase 3 reads the chunks anew and shuffles them again (two
    shuffles in all). The labels must give the same values each time they
    are computed (``persist()`` them if they come from something random):
    a change is caught with a RuntimeError.

    ``"sas"`` / ``"clipcov"`` (:data:`GROUPED`) take ``groups``, a dask array
    like ``labels`` (or ``labels`` itself), and ``"clipcov"`` takes
    ``features=(image_emb, text_emb)``, two dask arrays. Without groups,
    select's default: one task fits select's k-means (its seed, its
    ``n_groups``) on the embeddings of all the rows, which needs them all
    (n x d) on one worker; the groups are persisted for the passes that read
    them. Pass groups you computed to keep that off one worker. Their tasks take
    whole groups (select takes the groups of a call as its own classes, so a
    call on part of a group would re-cut it): memory per task is the largest
    group's rows.

    ``"colm"`` (:data:`SOURCED`) needs ``grads`` and ``sources``, a dask
    array like ``labels`` (or ``labels`` itself, as in select). The result
    equals one ``select(..., strategy="colm", sources=<the sources cut like
    the batches>, strategy_params=..., return_info=True)`` call (indices,
    weights bits, sizes), and a ``graft_array.ColmState`` passed as
    ``strategy_params={"state": state}`` ends in exactly the state (m, v, t,
    bit for bit) that call leaves it in, so one state serves consecutive
    passes. CoLM keeps, per source, the top coordinates of the mean
    Adam-normalised gradient over all the source's rows, so its tasks take
    whole sources (as ``"sas"`` / ``"clipcov"`` take whole groups): memory
    per task is the largest source's rows and their Adam-normalised
    gradients (N_s x p float64, p = C (h + 1) for LastLayerGrads), as in
    one select call. Its quotas are CoLM's (small sources whole, the rest
    proportional to size), planned on the client from the sources' counts.
    Unlike the other strategies it computes the selection when
    ``select_dask`` is called (the graph runs then, under the current dask
    scheduler), because the state must move on the client: the tasks also
    return the selected rows' gradients (k rows of ``grads``, or of
    ``residuals`` and ``embeddings``; only with a state), and the client
    updates the state from their mean (k x p float64 on the client, k the
    rows selected). The arrays returned then wrap computed results.

    Parameters
    ----------
    features : dask.array.Array (n_samples, n_features), or None
        Real numbers (integers are cast to float64). The feature axis must be
        one chunk. ``None``: select on the gradients (select's
        ``features=None``) or, for ``"mkdt"`` / ``"pdd"``, on the scores.
        ``"clipcov"``: the pair ``(image_emb, text_emb)``.
    grads : None, dask.array.Array (n_samples, p), or :class:`graft_array.LastLayerGrads`
        of two dask arrays (residuals (n_samples, C), embeddings (n_samples, h)),
        with the same row chunks as ``features``.
    batch_size : int, default=128
        Rows per GRAFT batch. Without labels, row chunks that do not hold
        whole batches are rechunked (every input; a warning says what it
        costs). With labels: the width of the class chunks.
    fraction : float in (0, 1], default=0.25
        select's ``fraction``.
    random_state : None, non-negative int or numpy.random.Generator
    **select_kwargs
        Passed to :func:`graft_array.select` (strategy, budget, rank, method,
        tol, band, weight_reg, gradmatch_lambda, min_size, max_size, solver,
        strategy_params, backend, and the dask arrays ``hessian_diag`` /
        ``scores``, ``labels``, ``groups`` and ``sources``: (n,) integers,
        chunked like the rows). ``offsets``, ``mask`` and ``return_info`` are
        set here.

    Returns
    -------
    indices : dask.array.Array of int64 (n_selected,), unknown chunk sizes (``"colm"``: computed, known)
        Dataset row numbers, batch after batch, each batch in selection order.
    weights : dask.array.Array of float64 (n_selected,), unknown chunk sizes
    sizes : dask.array.Array of int64 (n_batches,), unknown chunk sizes
        Rows chosen in each batch (with labels: in each class chunk).
    """
    for bad in ("offsets", "return_info", "mask"):
        if bad in select_kwargs:
            raise TypeError(f"{_FUNC} sets '{bad}' itself; do not pass it.")
    strategy = check_option(select_kwargs.get("strategy", "graft"), "strategy", _FUNC, _ALL_STRATEGIES)
    if strategy in _UNSUPPORTED:  # pragma: no cover - every strategy of the registry runs today
        raise ValueError(
            f"{_FUNC} supports strategy in {SUPPORTED} (with or without 'labels'), {GROUPED} (with 'groups') and "
            f"{SOURCED} (with 'sources'); got strategy={strategy!r}."
        )
    given = {nm: select_kwargs.pop(nm, None) for nm in ("labels", "groups", "sources")}
    given = {nm: v for nm, v in given.items() if v is not None}
    if "sources" in given and strategy not in SOURCED:
        raise ValueError(f"{_FUNC}: 'sources' applies to strategy='colm' only (the data source of each row); got "
                         f"sources with strategy={strategy!r}.")
    if "groups" in given and strategy not in GROUPED:
        raise ValueError(f"{_FUNC}: 'groups' applies to strategy='sas' or 'clipcov' only (their latent groups); got "
                         f"groups with strategy={strategy!r}. Pass classes or strata as 'labels'.")
    if len(given) > 1:
        other = next(nm for nm in given if nm != "labels")
        raise ValueError(f"{_FUNC} takes one of 'labels' and '{other}' (with strategy={strategy!r} the {other} are "
                         "the classes the selection runs in); got both.")
    if strategy in SOURCED and not given:
        raise ValueError(
            f"{_FUNC} with strategy={strategy!r} needs 'sources': a dask array of one int source id per row, "
            "chunked like the rows (each task selects whole sources). Got None."
        )
    kmeans_groups = strategy in GROUPED and not given  # select's default: k-means of all the rows, one task
    class_name, class_ids = next(iter(given.items()), (None, None))
    colm_params = None
    if strategy in SOURCED:  # checked here (select's checks and messages): the client needs them after the pass
        from .. import _family

        user_params = select_kwargs.pop("strategy_params", None)  # each task's call gets its own (_class_call)
        colm_params = _family.check_params(strategy, user_params)
    batch_size = check_int(batch_size, "batch_size", _FUNC, low=1)
    fraction = check_real(fraction, "fraction", _FUNC, low=0.0, high=1.0, low_inclusive=False)
    budget = _select._check_budget(select_kwargs.pop("budget", "call"))

    arrays, names = [], []
    if strategy == "clipcov":  # the pair (image_emb, text_emb)
        if not (isinstance(features, (list, tuple)) and len(features) == 2):
            raise TypeError(f"{_FUNC} with strategy='clipcov' expects 'features' to be a pair (image_emb, text_emb) "
                            f"of dask arrays; got {_type_name(features)}.")
        for part, nm in zip(features, ("features", "text")):
            arrays.append(_check_dask(part, "features[0]" if nm == "features" else "features[1]", ndim=(2,)))
            names.append(nm)
    elif features is not None:
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
    label = {"residuals": "grads.residuals", "embeddings": "grads.embeddings", "text": "features[1]"}
    if strategy == "clipcov":
        label["features"] = "features[0]"
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
    rng = check_random_state(random_state, "random_state", _FUNC)
    state = rng.bit_generator.state
    if kmeans_groups:
        class_name, class_ids = "groups", _kmeans_groups(arrays[0], strategy, select_kwargs, rng)
    if class_ids is not None:  # the shuffle forms the class chunks: any row chunks will do
        _check_class_ids(class_ids, class_name, n, rows, labels_of[0])
    elif not _aligned_chunks(n, rows, batch_size):
        arrays = _realign(arrays, labels_of, batch_size)
        rows = arrays[0].chunks[0]

    colm = quotas = colm_state = None
    if colm_params is not None:
        colm_state = colm_params["state"]
        colm, quotas = _colm_plan(strategy, grads_kind, arrays, names, user_params, colm_params)

    rng.integers(2**63)  # the caller's generator moves on as after one select call
    kwargs = dict(select_kwargs, fraction=fraction, budget=budget)
    plan = _Plan(batch_size, tuple(names), grads_kind, kwargs, type(rng.bit_generator), state, colm)

    if colm is not None:
        parts = _select_classes(arrays, class_ids, plan, strategy, grads_kind, budget, fraction, rows, True, quotas)
        return _colm_finish(parts, colm_state, colm_params, grads_kind, colm[1])
    if class_ids is not None:
        parts = _select_classes(arrays, class_ids, plan, strategy, grads_kind, budget, fraction, rows,
                                strategy in GROUPED)
    else:
        starts_all = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        keep = [i for i, c in enumerate(rows) if c]  # empty chunks (e.g. after slicing) hold no batch
        starts = starts_all[keep]
        nbatches = [len(_batches(int(rows[i]), batch_size)) for i in keep]
        blocks = [a.to_delayed().ravel()[keep] for a in arrays]  # one Delayed per (non-empty) row chunk
        nchunks = len(keep)

        weights_ctx = None
        if strategy == "crest":  # mean 1 over the call: the call's count (round(fraction * n_b) per batch) and rows
            lengths = [b - a for c in rows for a, b in _batches(int(c), batch_size)]
            weights_ctx = (sum(_fixed_size(m, fraction) for m in lengths), int(n))

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


def _kmeans_groups(emb, strategy, select_kwargs, rng):
    """select's default latent groups of "sas" / "clipcov": k-means of the embeddings of all the rows.

    One task fits it on every row (``_family.kmeans_labels`` on the rows in order, with the seed one select
    call draws), so that the groups are select's; the fit needs all the embeddings (n x d) on one worker.
    Persisted: the class counts, the shuffle and (budget="call") its second pass read the same labels.
    """
    from .. import _family

    params = _family.check_params(strategy, select_kwargs.get("strategy_params"))
    seed = int(generator_at(type(rng.bit_generator), rng.bit_generator.state).integers(2**63))  # select's draw
    fit = dask.delayed(_kmeans_fit, pure=True)(emb.to_delayed().ravel().tolist(), params["n_groups"], seed)
    return da.from_delayed(fit, shape=(emb.shape[0],), dtype=np.int64).rechunk({0: emb.chunks[0]}).persist()


def _kmeans_fit(blocks, n_groups, seed):
    from .._family import kmeans_labels

    return kmeans_labels(np.concatenate([np.asarray(b) for b in blocks], axis=0), None, n_groups, seed)


def _colm_plan(strategy, grads_kind, arrays, names, user_params, params):
    """CoLM's plan entry (the caller's params, the state's moments at the call, gather?) and its quota rule."""
    from ..strategies import colm

    if grads_kind == "none":
        raise ValueError(f"{_FUNC} with strategy={strategy!r} needs 'grads' (per-sample gradients, or "
                         "LastLayerGrads of dask arrays); got None.")
    state = params["state"]
    shape = {nm: a.shape for nm, a in zip(names, arrays)}
    p = shape["grads"][1] if grads_kind == "plain" else shape["residuals"][1] * (shape["embeddings"][1] + 1)
    colm.check_state(state, p, _FUNC)
    moments = (None, None, 0) if state is None else (state.m, state.v, int(state.t))
    rule = params["small_sources"]

    def quotas(classes, counts, total):  # the call's budgets over every source (small sources whole)
        return colm.budgets(classes, counts, total, rule)

    user = {key: value for key, value in (user_params or {}).items() if key != "state"}
    return (user, moments, state is not None), quotas


def _colm_finish(parts, state, params, grads_kind, moments):
    """CoLM: the selection computed now, the caller's state moved on here, the results as dask arrays."""
    done = dask.compute(*parts)
    idx, w, sz = (np.concatenate([d[j] for d in done]) for j in range(3))
    if state is not None:
        grads = tuple(np.concatenate([d[3][a] for d in done]) for a in range(len(done[0][3])))
        _colm_update(state, params, grads_kind, moments, grads)
    return tuple(da.from_array(a, chunks=(a.shape[0],)) for a in (idx, w, sz))


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
    single-machine tournament's.

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


def save_selection(path, indices, weights, *, n_samples=None, per_chunk=False):
    """Write a selection (dataset indices and their weights) to ``path``.

    ``indices`` / ``weights`` may be dask arrays (as :func:`select_dask`
    returns them) or array-likes. ``n_samples`` (the dataset's length) is
    stored when given. Returns the path written; :func:`load_selection` and
    :func:`selection_sampler` read either form.

    * ``per_chunk=False``: one small ``.npz`` at ``path`` (dask inputs are
      computed here, together, and gathered on the client).
    * ``per_chunk=True`` (dask inputs): ``path`` is a directory; the task
      that writes block ``i`` writes ``part-{i:06d}.npz`` where it runs, and
      only each block's count comes back; then ``manifest.npz`` (the parts,
      their counts, ``n_samples``) is written last. Nothing is gathered and no
      worker holds results until the end of the graph, so memory per worker
      does not grow with the dataset. On a cluster ``path`` must be storage
      every worker and the client can reach (as the Zarr input is). Blocks
      ``i`` of ``indices`` and ``weights`` must be aligned (they are, from
      :func:`select_dask`).
    """
    n = -1 if n_samples is None else check_int(n_samples, "n_samples", "save_selection", low=0)
    per_chunk = check_bool(per_chunk, "per_chunk", "save_selection")
    path = os.fspath(path)
    if per_chunk:
        if not (isinstance(indices, da.Array) and isinstance(weights, da.Array)):
            raise TypeError("save_selection(per_chunk=True) expects 'indices' and 'weights' as dask arrays; got "
                            f"{_type_name(indices)} and {_type_name(weights)}.")
        if indices.ndim != 1 or weights.ndim != 1 or indices.numblocks != weights.numblocks:
            raise ValueError("save_selection(per_chunk=True) expects 1-D 'indices' and 'weights' with the same number "
                             f"of blocks; got shapes {indices.shape} / {weights.shape} in {indices.numblocks} / "
                             f"{weights.numblocks} blocks.")
        os.makedirs(path, exist_ok=True)
        write = dask.delayed(_write_part, pure=False)
        blocks = zip(indices.to_delayed(optimize_graph=False), weights.to_delayed(optimize_graph=False))
        parts = [write(path, i, a, b) for i, (a, b) in enumerate(blocks)]  # one graph: each select task runs once
        counts = np.asarray(dask.compute(*parts), dtype=np.int64).reshape(-1)
        with open(os.path.join(path, _MANIFEST), "wb") as f:
            np.savez(f, parts=np.array([_part_name(i) for i in range(len(parts))]), counts=counts,
                     n_samples=np.int64(n))
        return path
    if isinstance(indices, da.Array) or isinstance(weights, da.Array):
        indices, weights = dask.compute(indices, weights)
    idx, w = _checked_selection(indices, weights)
    with open(path, "wb") as f:  # exactly this path (np.savez would add .npz to a name without it)
        np.savez(f, indices=idx, weights=w, n_samples=np.int64(n))
    return path


_MANIFEST = "manifest.npz"


def _part_name(i):
    return f"part-{i:06d}.npz"


def _checked_selection(indices, weights):
    idx = np.asarray(indices)
    w = np.asarray(weights, dtype=np.float64)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"save_selection expects 'indices' as 1-D integers; got shape {idx.shape}, dtype {idx.dtype}.")
    if w.shape != idx.shape:
        raise ValueError(f"save_selection expects 'weights' aligned with 'indices' {idx.shape}; got {w.shape}.")
    return idx.astype(np.int64), w


def _write_part(path, i, indices, weights):
    """One block of a per-chunk selection, written where the task runs; returns its count."""
    idx, w = _checked_selection(indices, weights)
    with open(os.path.join(path, _part_name(i)), "wb") as f:
        np.savez(f, indices=idx, weights=w)
    return idx.shape[0]


def _read(path):
    """``(indices, weights, n_samples or -1)`` of a selection file or a per-chunk directory."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        with np.load(path) as z:
            n = int(z["n_samples"]) if "n_samples" in z else -1
            return z["indices"].astype(np.int64), z["weights"].astype(np.float64), n
    with np.load(os.path.join(path, _MANIFEST)) as m:
        parts, counts, n = [str(x) for x in m["parts"]], m["counts"], int(m["n_samples"])
    idx, w = [], []
    for name, c in zip(parts, counts.tolist()):
        with np.load(os.path.join(path, name)) as z:
            idx.append(z["indices"].astype(np.int64))
            w.append(z["weights"].astype(np.float64))
        if idx[-1].shape[0] != c:
            raise ValueError(f"load_selection: {os.path.join(path, name)} holds {idx[-1].shape[0]} rows; its "
                             f"manifest says {c} (a part was rewritten after the manifest).")
    cat = np.concatenate
    return (cat(idx) if idx else np.zeros(0, np.int64)), (cat(w) if w else np.zeros(0)), n


def load_selection(path):
    """``(indices int64, weights float64)`` written by :func:`save_selection` (a file or a per-chunk directory)."""
    idx, w, _ = _read(path)
    return idx, w


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
        idx, w, n_stored = _read(selection)
        n_samples = (None if n_stored < 0 else n_stored) if n_samples is None else n_samples
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
