"""NumPy adapter: GRAFT over a whole dataset held in any array-like, in batches.

``select_dataset(X, ...)`` walks the rows of ``X`` (a NumPy array, a ``numpy.memmap``
larger than RAM, a list of rows, a pandas DataFrame, anything ``numpy.asarray``
turns into a 2-D float array chunk by chunk) in consecutive batches of
``batch_size`` rows, runs :func:`graft_array.select` on many batches per call
(``batches_per_call``, so only that many rows are in memory at once) with dataset
offsets, and returns dataset indices with their weights. A ``tqdm`` progress bar
shows the pass.
"""

import numpy as np

from .._select import LastLayerGrads, select
from .._validation import check_bool, check_int, check_random_state, check_real, generator_at

__all__ = ["select_dataset"]

_FUNC = "select_dataset"


def _rows(data, lo, hi, name):
    """Rows lo:hi of an array-like as a float array (pandas, lists, memmaps, arrays)."""
    if hasattr(data, "iloc"):  # pandas DataFrame / Series: positional rows
        block = data.iloc[lo:hi].to_numpy()
    else:
        block = data[lo:hi]
    if isinstance(block, np.ma.MaskedArray):
        raise TypeError(
            f"{_FUNC} expects '{name}' without a mask; got a numpy masked array, whose mask would be ignored. "
            f"Pass numpy.ma.getdata({name}) or {name}.filled(value)."
        )
    block = np.asarray(block)
    if block.ndim == 1:
        block = block[:, None]
    if block.ndim != 2:
        raise ValueError(f"{_FUNC} expects '{name}' with 2-D rows (n_samples, n_features); got {block.ndim}-D rows.")
    if not np.issubdtype(block.dtype, np.floating):
        if np.issubdtype(block.dtype, np.number) and not np.issubdtype(block.dtype, np.complexfloating):
            block = block.astype(np.float64)
        else:
            raise ValueError(f"{_FUNC} expects '{name}' with real numbers; got dtype {block.dtype}.")
    if block.dtype.itemsize > 8:  # float16 is upcast and byte order made native by select
        raise ValueError(
            f"{_FUNC} expects '{name}' with dtype float16, float32 or float64; got dtype {block.dtype}. Extended "
            f"precision is not supported (and is not narrowed silently): cast with {name}.astype(numpy.float64)."
        )
    return block


def _length(data, name):
    try:
        return len(data)
    except TypeError:
        raise TypeError(f"{_FUNC} expects '{name}' to be an array-like with a length (rows); got {type(data).__name__}.")


def select_dataset(
    X,
    grads=None,
    *,
    batch_size=128,
    batches_per_call=64,
    fraction=0.25,
    labels=None,
    progress=True,
    random_state=None,
    **select_kwargs,
):
    """GRAFT selection over a whole dataset, batch by batch; returns dataset indices and weights.

    Parameters
    ----------
    X : array-like (n_samples, n_features)
        NumPy array, memmap, list of rows or pandas DataFrame; read
        ``batch_size * batches_per_call`` rows at a time, never copied whole.
    grads : None, array-like (n_samples, p), or :class:`graft_array.LastLayerGrads`
        of two array-likes (residuals (n_samples, C), embeddings (n_samples, h)).
    batch_size : int, default=128
        Rows per GRAFT batch (the last batch may be shorter).
    batches_per_call : int, default=64
        Batches handed to one :func:`graft_array.select` call.
    fraction : float, default=0.25
        The budget: the pass selects ``round(fraction * n_samples)`` rows in all
        (with select's default ``budget="call"``: each call gets its share by
        cumulative rounding, ``round(fraction * end) - round(fraction * start)``
        of its rows, and spreads it over its batches by their residual
        curves). ``budget="batch"`` in ``select_kwargs`` gives every batch its
        own criterion's size instead.
    labels : None or int array-like (n_samples,)
        Class labels (or any strata): each call's budget is split per class and
        selected within each class (select's ``labels``).
        The family's row-aligned inputs of :func:`graft_array.select`
        (``groups``, ``sources``, ``scores``: (n_samples,); ``hessian_diag``:
        laid out like the gradients) go in ``select_kwargs`` over the whole
        dataset and are cut like the rows. With ``strategy="clipcov"``, ``X``
        is the pair ``(image_emb, text_emb)``. Without ``groups``, SAS and
        ClipCov find their k-means groups in each call's rows (pass ``groups``
        for dataset-wide latent classes). A :class:`graft_array.ColmState` in
        ``strategy_params`` moves on from call to call.
    progress : bool, default=True
        Show a tqdm progress bar (on stderr).
    random_state : None, non-negative int or numpy.random.Generator
        Seeds the randomized low-rank solver (and ``strategy="random"``): with
        ``budget="batch"`` and no ``labels`` the result equals one
        :func:`graft_array.select` call over all the batches with the same
        ``random_state`` (a Generator moves on by the same one draw).
    **select_kwargs
        Passed to :func:`graft_array.select` (strategy, gradmatch_lambda, rank,
        method, tol, band, weight_reg, min_size, max_size, solver, backend).
        ``strategy="random"`` seeds each batch by its dataset position, so the
        result does not depend on ``batches_per_call`` either.

    Returns
    -------
    indices : int64 ndarray
        Dataset row numbers, batch after batch, each batch in selection order.
    weights : float64 ndarray
        Aligned with ``indices``; within a batch they sum to the batch's size
        (``strategy="crest"``: mean 1 over each call, see :func:`graft_array.select`).
    """
    for bad in ("offsets", "return_info", "mask"):
        if bad in select_kwargs:
            raise TypeError(f"{_FUNC} sets '{bad}' itself; do not pass it.")
    pair = isinstance(X, tuple) and select_kwargs.get("strategy") == "clipcov"  # (image_emb, text_emb)
    if pair:
        if len(X) != 2 or _length(X[1], "X[1]") != _length(X[0], "X[0]"):
            raise ValueError(f"{_FUNC} with strategy='clipcov' expects X = (image_emb, text_emb) with one caption "
                             "embedding per image embedding.")
    n = _length(X[0] if pair else X, "X")
    if n == 0:
        raise ValueError(f"{_FUNC} expects 'X' with at least one row; got 0 rows.")
    batch_size = check_int(batch_size, "batch_size", _FUNC, low=1)
    batches_per_call = check_int(batches_per_call, "batches_per_call", _FUNC, low=1)
    progress = check_bool(progress, "progress", _FUNC)
    if isinstance(grads, LastLayerGrads):
        parts, names = (grads.residuals, grads.embeddings), ("grads.residuals", "grads.embeddings")
    elif grads is None:
        parts, names = (), ()
    else:
        parts, names = (grads,), ("grads",)
    for part, name in zip(parts, names):
        if _length(part, name) != n:
            raise ValueError(f"{_FUNC} expects '{name}' to have one row per row of 'X' ({n}); got {len(part)}.")
    lab = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (n,):
            raise ValueError(f"{_FUNC} expects 'labels' with one label per row of 'X' ({n},); got shape {lab.shape}.")
    rowwise = {}  # the family's row-aligned inputs of select, cut like the rows
    for name in ("groups", "sources", "scores", "hessian_diag"):
        value = select_kwargs.pop(name, None)
        if value is None or isinstance(value, str):
            if value is not None:
                select_kwargs[name] = value  # hessian_diag="softmax"
            continue
        if _length(value, name) != n:
            raise ValueError(f"{_FUNC} expects '{name}' to have one row per row of 'X' ({n}); got {len(value)}.")
        rowwise[name] = value
    fraction = check_real(fraction, "fraction", _FUNC, low=0.0, high=1.0, low_inclusive=False)
    rng = check_random_state(random_state, "random_state", _FUNC)
    state = rng.bit_generator.state

    from tqdm.auto import tqdm

    step = batch_size * batches_per_call
    idx_out, w_out = [], []
    with tqdm(total=n, desc="GRAFT selection", unit="sample", disable=not progress, leave=False) as bar:
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            F = tuple(_rows(x, lo, hi, f"X[{i}]") for i, x in enumerate(X)) if pair else _rows(X, lo, hi, "X")
            full = (hi - lo) // batch_size
            chunks = []
            if full:
                chunks.append((lo, lo + full * batch_size, full))
            if lo + full * batch_size < hi:
                chunks.append((lo + full * batch_size, hi, 1))
            for a, b, nb in chunks:
                if pair:
                    Fb = tuple(f[a - lo:b - lo].reshape(nb, (b - a) // nb, f.shape[1]) for f in F)
                else:
                    Fb = F[a - lo:b - lo].reshape(nb, (b - a) // nb, F.shape[1])
                g = tuple(_rows(p, a, b, nm).reshape(nb, (b - a) // nb, -1) for p, nm in zip(parts, names))
                if isinstance(grads, LastLayerGrads):
                    g = LastLayerGrads(*g)
                elif g:
                    g = g[0]
                else:
                    g = None
                offsets = a + np.arange(nb, dtype=np.int64) * ((b - a) // nb)
                kw = dict(select_kwargs)
                if kw.get("budget", "call") == "call":  # this call's share of round(fraction * n), exactly
                    kw["budget"] = int(round(fraction * b)) - int(round(fraction * a))
                if lab is not None:
                    kw["labels"] = lab[a:b].reshape(nb, (b - a) // nb)
                for name, value in rowwise.items():
                    part = _rows(value, a, b, name) if name == "hessian_diag" else np.asarray(value[a:b])
                    kw[name] = part.reshape((nb, (b - a) // nb) + part.shape[1:])
                s = select(Fb, g, fraction=fraction, offsets=offsets, return_info=True,
                           random_state=generator_at(type(rng.bit_generator), state), **kw)
                idx_out.append(np.asarray(s.indices))
                w_out.append(np.asarray(s.weights))
            bar.update(hi - lo)
    rng.integers(2**63)  # the caller's generator moves on as after one select call
    return np.concatenate(idx_out), np.concatenate(w_out)
