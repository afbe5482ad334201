"""The family's extra inputs to :func:`graft_array.select`: checked, then folded into the call.

Each strategy of the registry names the row-aligned inputs it takes
(:attr:`graft_array.strategies.Strategy.inputs`) and its ``strategy_params``.
This module checks them with select's messages and rewrites the call into the
form the stack machinery already runs:

* ``sources`` (CoLM) and ``groups`` (SAS, ClipCov) become ``labels``: the
  selection runs per source / per latent group, each with its share of the
  budget, exactly as class-balanced selection does. SAS and ClipCov without
  ``groups`` take k-means clusters of the embeddings (:func:`kmeans_labels`).
* ``hessian_diag`` (AdaCore) travels beside the gradients: plain rows become
  ``[G | D]``, :class:`LastLayerGrads` ``([E | Q], H)``; the strategy splits
  them again, batch by batch.
* ``scores`` (MKDT, PDD) travel as a one-column gradient.
* ClipCov's pair ``features=(image_emb, text_emb)`` becomes ``[X | T]``.
"""

import numbers

import numpy as np

from ._namespace import array_namespace, describe, is_array, to_numpy_view
from ._validation import as_kernel_dtype, check_array, check_int, check_real, nonfinite_error
from .strategies import REGISTRY

__all__ = ["prepare", "kmeans_labels", "INPUTS"]

_FUNC = "select"
INPUTS = ("hessian_diag", "sources", "groups", "scores")


def check_params(strategy, params):
    """strategy_params completed with the strategy's defaults; unknown keys and bad values raise."""
    entry = REGISTRY[strategy]
    defaults = dict(entry.params)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"The 'strategy_params' parameter of select must be a dict or None. Got {params!r} instead.")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        allowed = ", ".join(repr(k) for k in defaults) or "none"
        raise ValueError(
            f"The 'strategy_params' parameter of select got key(s) {', '.join(map(repr, unknown))} that "
            f"strategy={strategy!r} does not take (it takes: {allowed})."
        )
    out = dict(defaults, **params)
    where = "strategy_params"
    for key, value in params.items():
        nm = f"{where}['{key}']"
        if key == "damping":
            out[key] = check_real(value, nm, _FUNC, low=0.0, low_inclusive=False)
        elif key in ("beta1", "beta2"):
            out[key] = check_real(value, nm, _FUNC, low=0.0, high=1.0)
            if out[key] >= 1.0:
                raise ValueError(f"The '{nm}' parameter of select must be a float in [0, 1). Got {value!r} instead.")
        elif key == "eps":
            out[key] = check_real(value, nm, _FUNC, low=0.0, low_inclusive=False)
        elif key in ("dims", "n_groups"):
            out[key] = check_int(value, nm, _FUNC, low=1)
        elif key == "penalty":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"The '{nm}' parameter of select must be a bool. Got {value!r} instead.")
            out[key] = bool(value)
        elif key == "small_sources":
            out[key] = _check_small(value, nm)
        elif key == "state":
            from .strategies.colm import ColmState

            if value is not None and not isinstance(value, ColmState):
                raise TypeError(
                    f"The '{nm}' parameter of select must be a graft_array.ColmState (the moments kept across "
                    f"calls) or None. Got {describe(value)} instead."
                )
    return out


def _check_small(value, nm):
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return check_int(value, nm, _FUNC, low=0)
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
            return tuple(int(v) for v in arr)
    raise TypeError(
        f"The '{nm}' parameter of select must be 'auto', an int k (the k smallest sources) or a list of source "
        f"ids. Got {value!r} instead."
    )


def prepare(opts, features, grads, labels, extra, mask):
    """(features, grads, labels) of the call rewritten for ``opts["strategy"]``; ``opts`` gains ``params``.

    ``extra``: the family's inputs by name (``INPUTS``), None where not given.
    """
    strategy = opts["strategy"]
    entry = REGISTRY[strategy]
    opts["params"] = check_params(strategy, opts.pop("strategy_params", None))
    for nm in INPUTS:
        if extra[nm] is not None and nm not in entry.inputs:
            takers = [s for s, e in REGISTRY.items() if nm in e.inputs]
            raise ValueError(
                f"The '{nm}' parameter of select applies to strategy={' or '.join(map(repr, takers))} only. "
                f"Got {nm}={describe(extra[nm]) if is_array(extra[nm]) else type(extra[nm]).__name__} with "
                f"strategy={strategy!r} instead."
            )
    if grads is not None and not entry.takes_grads:
        raise ValueError(
            f"select with strategy={strategy!r} does not read per-sample gradients (it works on "
            f"{'the scores' if 'scores' in entry.inputs else 'the embeddings'}). Got grads={describe(grads)} "
            "instead; pass grads=None."
        )
    if strategy == "clipcov":
        features, opts["pair_split"] = _pair(features)
    for nm in ("sources", "groups"):
        if extra[nm] is not None:
            if labels is not None:
                raise ValueError(
                    f"select takes one of 'labels' and '{nm}' (with strategy={strategy!r} the {nm} are the classes "
                    f"the selection runs in). Got both."
                )
            _check_ids(extra[nm], nm, features if features is not None else _grad_rows(grads))
            labels = extra[nm]
    if strategy == "colm" and labels is None:
        raise ValueError("select with strategy='colm' needs 'sources' (the source id of each sample). Got None.")
    if strategy in ("sas", "clipcov") and labels is None:
        emb = features if strategy == "sas" else _first_part(features, opts["pair_split"])
        labels = kmeans_labels(emb, mask, opts["params"]["n_groups"], opts["seed"])
    if strategy == "adacore":
        grads = _with_hessian(grads, extra["hessian_diag"])
    if "scores" in entry.inputs:
        if extra["scores"] is None:
            raise ValueError(f"select with strategy={strategy!r} needs 'scores' (one real score per sample). Got None.")
        grads = _scores_as_grads(extra["scores"], features)
        if features is None:
            features = grads
    return features, grads, labels


def _grad_rows(grads):
    """What lays out the rows when features=None: the gradients (the residuals of LastLayerGrads)."""
    from ._select import LastLayerGrads

    return grads.residuals if isinstance(grads, LastLayerGrads) else grads


def _check_ids(value, nm, ref):
    """``sources`` / ``groups``: one integer per row of ``ref`` (an array, or a list of per-batch arrays).

    Checked here, before they travel as ``labels``, so that the message names the argument the caller gave;
    anything else (an unusable ``ref``) is left to select's own checks.
    """
    if isinstance(ref, (list, tuple)):
        if not all(is_array(r) for r in ref):
            return
        if not isinstance(value, (list, tuple)) or len(value) != len(ref):
            raise TypeError(
                f"The '{nm}' parameter of select must be a list of {len(ref)} int arrays (one per batch of "
                f"'features') when 'features' is a list. Got {describe(value)} instead."
            )
        for b, (v, r) in enumerate(zip(value, ref)):
            _check_id_array(v, f"{nm}[{b}]", (int(r.shape[0]),), f"features[{b}]")
    elif is_array(ref):
        _check_id_array(value, nm, tuple(int(k) for k in ref.shape[:-1]), "features")


def _check_id_array(value, nm, shape, ref_nm):
    try:
        arr = np.asarray(to_numpy_view(value) if is_array(value) else value)
    except ValueError:  # a ragged nested list
        arr = None
    if arr is None or arr.shape != shape:
        got = "a ragged nested list" if arr is None else f"shape {arr.shape}"
        raise ValueError(
            f"The '{nm}' parameter of select must hold one int id per row of '{ref_nm}' (shape {shape}). Got "
            f"{got} instead."
        )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"The '{nm}' parameter of select must hold integers (ids). Got dtype {arr.dtype} instead.")


def _pair(features):
    """ClipCov's ``(image_emb, text_emb)`` as one features argument [X | T], and the width of X."""
    if not (isinstance(features, (list, tuple)) and len(features) == 2):
        raise TypeError(
            "select with strategy='clipcov' expects 'features' to be a pair (image_emb, text_emb): two arrays "
            f"laid out alike, or two lists of per-batch arrays. Got {describe(features)} instead."
        )
    X, T = features
    if is_array(X) and is_array(T):
        xp = check_array(X, "features[0]", _FUNC, ndims=(2, 3), shape_doc="(n, d) or (batch, n, d)")
        check_array(T, "features[1]", _FUNC, ndims=(2, 3), shape_doc="(n, d') or (batch, n, d')")
        if tuple(X.shape[:-1]) != tuple(T.shape[:-1]) or type(X) is not type(T):
            raise ValueError(
                "select with strategy='clipcov' expects one caption embedding per image embedding, in the same "
                f"array library: features[1] must have the leading shape of features[0]. Got {describe(X)} and "
                f"{describe(T)}."
            )
        X, T = as_kernel_dtype(X, "features[0]", _FUNC), as_kernel_dtype(T, "features[1]", _FUNC)
        dt = xp.result_type(X.dtype, T.dtype)
        return xp.concat([xp.astype(X, dt), xp.astype(T, dt)], axis=-1), int(X.shape[-1])
    if isinstance(X, (list, tuple)) and isinstance(T, (list, tuple)) and len(X) == len(T) and len(X):
        out = []
        for b, (x, t) in enumerate(zip(X, T)):
            (joined, split) = _pair((x, t))
            out.append(joined)
        widths = {int(x.shape[-1]) for x in X}
        if len(widths) != 1:
            raise ValueError(f"select expects every batch of features[0] to have the same width; got {sorted(widths)}.")
        return out, split
    raise TypeError(
        "select with strategy='clipcov' expects 'features' to be (image_emb, text_emb): two arrays, or two lists "
        f"of the same length. Got {describe(X)} and {describe(T)}."
    )


def _first_part(features, split):
    if isinstance(features, (list, tuple)):
        return [f[..., :split] for f in features]
    return features[..., :split]


def _host_rows(x):
    """A NumPy float64 copy of an array (host or device)."""
    from ._agnostic.criterion import _host

    return _host(x)


def kmeans_labels(features, mask, n_groups, seed):
    """Latent groups of the rows: k-means (k-means++ start, Lloyd) on the embeddings, laid out like the rows.

    All the call's rows together (the padding of a masked array excluded, labelled 0);
    deterministic for ``seed``. ``min(n_groups, rows)`` groups; ties to the lower
    centre. Memory: rows x groups distances.
    """
    if features is None:
        raise ValueError("select needs 'features' (the embeddings) to find the latent groups. Got None.")
    if isinstance(features, (list, tuple)):
        arrs = [_host_rows(f) for f in features]
        flat = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrs], axis=0)
        keep = np.ones(flat.shape[0], dtype=bool)
    else:
        a = _host_rows(features)
        flat = a.reshape(-1, a.shape[-1])
        keep = np.ones(flat.shape[0], dtype=bool) if mask is None else np.asarray(
            to_numpy_view(mask) if is_array(mask) else mask, dtype=bool).reshape(-1)
        if keep.shape[0] != flat.shape[0]:
            keep = np.ones(flat.shape[0], dtype=bool)  # select's own check of the mask reports the mismatch
    X = flat[keep]
    if not np.all(np.isfinite(X)):
        raise nonfinite_error("features", _FUNC, features if is_array(features) else X)
    lab = np.zeros(flat.shape[0], dtype=np.int64)
    lab[keep] = _kmeans(X, n_groups, np.random.default_rng([int(seed) % 2**63, 0x6B6D]))
    if isinstance(features, (list, tuple)):
        return list(np.split(lab, np.cumsum([a.shape[0] for a in arrs])[:-1]))
    return lab.reshape(features.shape[:-1])


def _nearest(X, C):
    """Index of the nearest centre of each row (ties to the lower centre) and the squared distance to it."""
    d2 = (X * X).sum(1)[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None, :]
    j = np.argmin(d2, axis=1)
    return j, np.maximum(d2[np.arange(X.shape[0]), j], 0.0)


def _kmeans(X, k, rng, iters=100):
    n = X.shape[0]
    k = min(k, n)
    if k <= 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    C = np.empty((k, X.shape[1]))
    C[0] = X[rng.integers(n)]
    d2 = ((X - C[0]) ** 2).sum(1)
    for t in range(1, k):  # k-means++: the next centre with probability proportional to d^2
        tot = d2.sum()
        i = int(rng.integers(n)) if tot <= 0 else int(np.searchsorted(np.cumsum(d2), rng.random() * tot, "right"))
        C[t] = X[min(i, n - 1)]
        d2 = np.minimum(d2, ((X - C[t]) ** 2).sum(1))
    lab = None
    for _ in range(iters):
        new, _ = _nearest(X, C)
        if lab is not None and np.array_equal(new, lab):
            break
        lab = new
        for t in range(k):
            rows = lab == t
            if rows.any():
                C[t] = X[rows].mean(0)
    return lab.astype(np.int64)


def _same_layout(value, ref, nm, ref_nm):
    """``value`` (an array or a list of arrays) laid out like ``ref``, real floating and finite; kernel dtype."""
    if isinstance(ref, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(ref):
            raise TypeError(
                f"select expects '{nm}' to be a list of {len(ref)} arrays, one per array of '{ref_nm}'. Got "
                f"{describe(value)} instead."
            )
        return [_same_layout(v, r, f"{nm}[{b}]", f"{ref_nm}[{b}]") for b, (v, r) in enumerate(zip(value, ref))]
    if not is_array(value):
        raise TypeError(
            f"select expects '{nm}' to be an array laid out like '{ref_nm}'. Got {describe(value)} instead."
        )
    xp = check_array(value, nm, _FUNC, ndims=(ref.ndim,), shape_doc=f"{tuple(ref.shape)}", min_rows=0)
    if tuple(value.shape) != tuple(ref.shape) or type(value) is not type(ref):
        raise ValueError(
            f"select expects '{nm}' laid out like '{ref_nm}' ({describe(ref)}). Got {describe(value)} instead."
        )
    if not bool(xp.all(xp.isfinite(value))):
        raise nonfinite_error(nm, _FUNC, value)
    return as_kernel_dtype(value, nm, _FUNC)


def _join(a, b):
    """[a | b] along the last axis, elementwise over lists."""
    if isinstance(a, (list, tuple)):
        return [_join(x, y) for x, y in zip(a, b)]
    xp = array_namespace(a)
    a = as_kernel_dtype(a, "grads", _FUNC)
    dt = xp.result_type(a.dtype, b.dtype)
    return xp.concat([xp.astype(a, dt), xp.astype(b, dt)], axis=-1)


def _softmax_q(E):
    if isinstance(E, (list, tuple)):
        return [_softmax_q(e) for e in E]
    xp = array_namespace(E)
    a = xp.abs(as_kernel_dtype(E, "grads.residuals", _FUNC))
    return a * (1.0 - a)


def _with_hessian(grads, D):
    """AdaCore's gradients with the Hessian diagonal beside them: [G | D], or LastLayerGrads([E | Q], H)."""
    from ._select import LastLayerGrads

    if grads is None:
        raise ValueError(
            "select with strategy='adacore' needs per-sample gradients: pass 'grads' (an array, a list of arrays "
            "or LastLayerGrads(residuals, embeddings)). Got grads=None instead."
        )
    if D is None:
        raise ValueError(
            "select with strategy='adacore' needs 'hessian_diag': the per-sample Hessian diagonal laid out like "
            "'grads' (like grads.residuals for LastLayerGrads), or 'softmax' with LastLayerGrads of softmax "
            "cross-entropy. Got None."
        )
    if isinstance(grads, LastLayerGrads):
        E, H = grads
        if isinstance(D, str):
            if D != "softmax":
                raise ValueError(f"The 'hessian_diag' parameter of select must be an array or 'softmax'. Got {D!r}.")
            _same_layout(E, E, "grads.residuals", "grads.residuals")
            Q = _softmax_q(E)
        else:
            Q = _same_layout(D, E, "hessian_diag", "grads.residuals")
        return LastLayerGrads(_join(E, Q), H)
    if isinstance(D, str):
        raise ValueError(
            "select: hessian_diag='softmax' needs LastLayerGrads (the logit residuals p - y); with plain 'grads' "
            "pass the Hessian diagonal as an array laid out like 'grads'."
        )
    if not (is_array(grads) or isinstance(grads, (list, tuple))):
        raise TypeError(
            f"select expects 'grads' to be an array, a list of arrays or LastLayerGrads; got {describe(grads)}."
        )
    return _join(grads, _same_layout(D, grads, "hessian_diag", "grads"))


def _scores_as_grads(scores, features):
    """MKDT / PDD: the scores, one per row laid out like the rows, as a one-column gradient."""
    if isinstance(scores, (list, tuple)):
        out = [_one_col(s, f"scores[{b}]", (1,)) for b, s in enumerate(scores)]
        want = [tuple(f.shape[:-1]) for f in features] if isinstance(features, (list, tuple)) else None
    else:
        out = _one_col(scores, "scores", (1, 2))
        want = None if features is None or isinstance(features, (list, tuple)) else tuple(features.shape[:-1])
    got = [tuple(o.shape[:-1]) for o in out] if isinstance(out, list) else tuple(out.shape[:-1])
    if want is not None and got != want:
        raise ValueError(
            f"select expects 'scores' with one score per row of 'features' (leading shape {want}). Got {got} instead."
        )
    return out


def _one_col(s, nm, ndims):
    if not is_array(s):
        raise TypeError(
            f"select expects '{nm}' to be an array of one real score per sample. Got {describe(s)} instead."
        )
    if s.ndim not in ndims:
        raise ValueError(f"select expects '{nm}' of shape {' or '.join(('(n,)', '(batch, n)')[:len(ndims)])}. "
                         f"Got {describe(s)} instead.")
    xp = check_array(s[..., None], nm, _FUNC, ndims=(2, 3), shape_doc="(n,) or (batch, n)", min_rows=0)
    if not bool(xp.all(xp.isfinite(s))):
        raise nonfinite_error(nm, _FUNC, s)
    return as_kernel_dtype(s, nm, _FUNC)[..., None]
