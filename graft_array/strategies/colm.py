"""``strategy="colm"``: CoLM (Nguyen et al., 2024), mini-batch coresets for training on many data sources.

On one large batch (the call) whose samples come from sources of very
different sizes (``sources``), as CoLM's code does:

1. **Small sources are kept whole.** ``small_sources="auto"`` (default): a
   source is small when it fits in an equal share of the budget, n_s * S <= k
   (S sources, k rows to select), so keeping it whole costs no more than an
   equal split would give it. An int k: the k smallest sources (ties to the
   lower id); a list: those source ids.
2. **Gradients as Adam sees them.** Each sample's gradient g_i becomes the
   update Adam would take with it, u_i = m_hat_i / (sqrt(v_hat_i) + eps), where
   m_i = beta1 m + (1 - beta1) g_i and v_i = beta2 v + (1 - beta2) g_i^2 start
   from the selector's own moments (m, v, t) and are bias-corrected with t + 1.
   Those moments live in a :class:`ColmState` the caller holds
   (``strategy_params={"state": ...}``); after each call they move to the mean
   gradient of the selected samples. Without a state every call starts from zero
   moments (Adam's first step: u_i close to sign(g_i)).
3. **Top coordinates per source.** For each large source, the ``dims``
   coordinates of largest |mean u_i| over the source (ties to the lower
   coordinate); the others are dropped.
4. **Facility location per source** (a source longer than the call's largest
   batch is cut into near-equal chunks, each with the source's share, as
   ``labels`` does; the chunks' rounded shares can add up to a row or two
   more than the source's budget) on those coordinates, with CoLM's cosine
   similarity (the shared kernel, :mod:`graft_array.strategies.facility`, with
   s_ij = (1 + cos_ij) / 2, which leaves every greedy choice of the plain cosine
   unchanged), budget per large source proportional to its size
   (ceil(R n_s / N_large), R the rows left after the small sources, at least 1),
   cluster-size weights (a small source's rows weigh 1 each).

With :class:`graft_array.LastLayerGrads` the C (h + 1) coordinates of each
source are formed one source at a time; the call keeps N x min(dims, p) of them
(CoLM runs on one large mini-batch). ``residuals``: rho(m) of the restricted,
normalised rows along each source's order.
"""

import numpy as np

from .._namespace import device_of
from . import facility

__all__ = ["ColmState", "prepare", "run"]


class ColmState:
    """CoLM's selector moments across calls: m, v (p,) NumPy float64 and the step t (see strategies.colm).

    Create one, pass it as ``select(..., strategy="colm", strategy_params={"state": state})`` on every call;
    ``select`` updates it in place after each selection. :meth:`reset` forgets it.
    """

    def __init__(self):
        self.m = None
        self.v = None
        self.t = 0

    def reset(self):
        self.m = self.v = None
        self.t = 0

    def __repr__(self):
        width = None if self.m is None else int(self.m.shape[0])
        return f"ColmState(t={self.t}, p={width})"


def _explicit(xp, parts, grads_kind, rows):
    """The sources' gradient rows (n_s, p) float64: plain rows, or vec(e_i (x) [h_i; 1])."""
    take = xp.asarray(rows, device=device_of(parts[0]))
    if grads_kind == "plain":
        return xp.astype(xp.take(parts[0], take, axis=0), xp.float64)
    E = xp.astype(xp.take(parts[0], take, axis=0), xp.float64)
    H = xp.astype(xp.take(parts[1], take, axis=0), xp.float64)
    Hx = xp.concat([H, xp.ones((H.shape[0], 1), dtype=xp.float64, device=device_of(H))], axis=1)
    return xp.reshape(E[:, :, None] * Hx[:, None, :], (E.shape[0], -1))



def small_sources(ids, counts, total, rule):
    """The sources (a bool per id of ``ids``) kept whole."""
    S = len(ids)
    if isinstance(rule, str):  # "auto"
        return counts * S <= total
    if isinstance(rule, int):
        out = np.zeros(S, dtype=bool)
        out[np.argsort(counts, kind="stable")[:rule]] = True
        return out
    return np.isin(ids, np.asarray(rule, dtype=np.int64))


def budgets(ids, counts, total, rule):
    """{source: rows}: small sources whole, the rest of ``total`` proportional to size (>= 1, <= the source)."""
    small = small_sources(ids, counts, total, rule)
    left = total - int(counts[small].sum())
    n_large = int(counts[~small].sum())
    out = {}
    for c, n_c, s in zip(ids.tolist(), counts.tolist(), small.tolist()):
        out[c] = n_c if s else min(n_c, max(1, -(-max(left, 0) * n_c // n_large)))
    return out


def check_state(state, p, func):
    """A ColmState's moments must have the gradients' ``p`` coordinates (or none yet)."""
    if state is not None and state.m is not None and int(state.m.shape[0]) != p:
        raise ValueError(
            f"{func} with strategy='colm': strategy_params['state'] holds moments of {int(state.m.shape[0])} "
            f"coordinates, but these gradients have {p}. Pass a fresh ColmState (or call state.reset())."
        )


def move_state(state, xp, parts, grads_kind, positions, b1, b2, moments, t):
    """Adam's moments to the mean explicit gradient ``g`` of rows ``positions`` of ``parts``; ``moments``: the
    previous ``(m, v)``, or None for a fresh state (then ``m = (1 - b1) g``, ``v = (1 - b2) g^2``); step ``t``."""
    from .._agnostic.criterion import _host

    # kept as NumPy float64 on the host: one state serves NumPy, torch and CuPy calls alike
    g = _host(xp.mean(_explicit(xp, parts, grads_kind, np.asarray(positions, dtype=np.int64)), axis=0))
    state.m = (1.0 - b1) * g if moments is None else b1 * moments[0] + (1.0 - b1) * g
    state.v = (1.0 - b2) * g * g if moments is None else b2 * moments[1] + (1.0 - b2) * g * g
    state.t = t


def prepare(xp, parts, grads_kind, lab, total, params):
    """CoLM's rows for the call: ((U,), "plain", budgets, finish).

    ``U`` (N, min(dims, p)): each row's Adam-normalised gradient on its
    source's top coordinates (steps 2 and 3); ``finish(positions)`` moves the
    state's moments to the mean gradient of the selected rows (positions into
    the call's rows).
    """
    state = params["state"]
    b1, b2, eps = params["beta1"], params["beta2"], params["eps"]
    ids, counts = np.unique(lab, return_counts=True)
    p = int(parts[0].shape[-1]) if grads_kind == "plain" else int(parts[0].shape[-1]) * (int(parts[1].shape[-1]) + 1)
    check_state(state, p, "select")
    fresh = state is None or state.m is None
    m0 = 0.0 if fresh else xp.asarray(state.m, dtype=xp.float64, device=device_of(parts[0]))
    v0 = 0.0 if fresh else xp.asarray(state.v, dtype=xp.float64, device=device_of(parts[0]))
    t = (0 if state is None else state.t) + 1
    dims = min(params["dims"], p)
    blocks, order = [], []
    for c in ids:
        rows = np.flatnonzero(lab == c)
        G = _explicit(xp, parts, grads_kind, rows)
        mh = (b1 * m0 + (1.0 - b1) * G) / (1.0 - b1**t)
        vh = (b2 * v0 + (1.0 - b2) * G * G) / (1.0 - b2**t)
        U = mh / (xp.sqrt(vh) + eps)
        score = xp.abs(xp.mean(U, axis=0))
        keep = xp.argsort(-score, stable=True)[:dims]
        blocks.append(xp.take(U, keep, axis=1))
        order.append(rows)
    back = xp.asarray(np.argsort(np.concatenate(order)), device=device_of(parts[0]))
    U = xp.take(xp.concat(blocks, axis=0), back, axis=0)

    def finish(positions):
        if state is None or len(positions) == 0:
            return
        move_state(state, xp, parts, grads_kind, positions, b1, b2, None if fresh else (state.m, state.v), t)

    return (U,), "plain", budgets(ids, counts, total, params["small_sources"]), finish


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """CoLM's facility location of every source chunk of a stack (cosine similarities, cluster-size weights).

    A chunk taken whole (a small source) weighs 1 a row: the cluster sizes would hand a row whose normalised
    gradient is parallel to an earlier one's (cosine 1 up to round-off, common at Adam's first step, where
    u_i ~ sign(g_i)) to that row, leaving it weight 0.
    """
    if name == "numba":  # the Gram of the normalised coordinates by BLAS (their N x dims rows are dense)
        U = np.ascontiguousarray(grads[0], dtype=np.float64)
        order, weights, rho = facility.facility_on_grams_nb(np.matmul(U, U.transpose(0, 2, 1)), m, True, True)
        sizes = np.full(F.shape[0], m, dtype=np.int64)
    else:
        order, sizes, rho, weights = facility.run(F, grads, grads_kind, m, opts, seed, starts, name, cosine=True)
    if m == F.shape[1]:
        if name == "numba":
            weights = np.ones_like(weights)
        else:
            from .._namespace import array_namespace

            weights = array_namespace(weights).ones_like(weights)
    return order, sizes, rho, weights
