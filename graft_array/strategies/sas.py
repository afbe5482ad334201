"""``strategy="sas"``: SAS (Joshi & Mirzasoleiman, ICML 2023), subsets for contrastive self-supervised learning.

The examples that contribute most to contrastive learning are those most similar
to the rest of their latent class. Within each latent group (``groups``, or
k-means clusters of the embeddings: :func:`graft_array._family.kmeans_labels`),
on one batch or class chunk of embeddings x_i (the ``features``):

* D_ij = max(0, cos(x_i, x_j)), the cosine similarities thresholded at 0
  (D_ii = 1; a zero embedding has similarity 0 with everything). A cosine
  within ``DUPLICATE_ULPS`` eps of 1 is round-off and counts as 1, and
  cos_ij = <x_i, x_j> (1/||x_i|| 1/||x_j||) is formed symmetrically in i and j:
  equal embeddings get equal rows of D, so their gains tie exactly and the
  lowest index wins (the Numba kernel; the generic twin's Gram comes from a
  matrix product, whose rounding may differ between equal rows);
* ``penalty=True`` (default, the paper's greedy): repeatedly take the row of
  largest gain sum_j D_ij - sum_{s in S} D_si (central, and not redundant with
  what is already chosen), ties to the lowest index;
* ``penalty=False`` (the reference code): a bug there zeroes the redundancy
  term, so its greedy ranks by the total similarity sum_j D_ij alone (most
  central first, ties to the lowest index). Offered to reproduce it.

Weights are uniform (n / m): contrastive training uses the subset as it is.
Memory: n x n within one batch or chunk only. Numba: :func:`sas_nb`; any
namespace: :func:`sas`.
"""

import numpy as np
from numba import njit, prange

from .._namespace import device_of
from ._batch import penalised_greedy, penalised_greedy_nb, unweighted

__all__ = ["DUPLICATE_ULPS", "sas_nb", "sas", "run"]

#: a cosine >= 1 - DUPLICATE_ULPS * eps is the round-off of equal (or parallel) embeddings: it counts as 1
DUPLICATE_ULPS = 16.0
_NEAR_ONE = 1.0 - DUPLICATE_ULPS * 2.220446049250313e-16


@njit(cache=True, nogil=True)
def cosine_gram_nb(X):
    """max(0, cos(x_i, x_j)) (n, n) of one batch's rows X (n, d), float64; 1 on the diagonal of non-zero rows."""
    n, d = X.shape
    inv = np.empty(n)
    for i in range(n):
        s = 0.0
        for a in range(d):
            s += np.float64(X[i, a]) * np.float64(X[i, a])
        inv[i] = 1.0 / np.sqrt(s) if s > 0.0 else 0.0
    D = np.empty((n, n))
    for i in range(n):
        for j in range(i + 1):
            s = 0.0
            for a in range(d):
                s += np.float64(X[i, a]) * np.float64(X[j, a])
            c = s * (inv[i] * inv[j]) if i != j else (1.0 if inv[i] > 0.0 else 0.0)
            if c >= _NEAR_ONE:  # equal rows: exactly the diagonal's 1
                c = 1.0
            D[i, j] = c if c > 0.0 else 0.0
            D[j, i] = D[i, j]
    return D


@njit(cache=True, nogil=True, parallel=True)
def sas_nb(F, m, penalty):
    """SAS's rows (B, m) of every batch of embeddings F (B, n, d)."""
    nb = F.shape[0]
    order = np.empty((nb, m), dtype=np.int64)
    for bi in prange(nb):
        penalised_greedy_nb(cosine_gram_nb(F[bi]), m, 0.0, 1.0, 1.0, 0.0, 1.0 if penalty else 0.0, order[bi])
    return order


def cosine_gram(xp, F):
    """max(0, cos) (B, n, n) of every batch: the twin of :func:`cosine_gram_nb`."""
    from .._agnostic.criterion import _mT

    X = xp.astype(F, xp.float64)
    sq = xp.sum(X * X, axis=2)
    inv = xp.where(sq > 0.0, 1.0 / xp.sqrt(xp.where(sq > 0.0, sq, xp.ones_like(sq))), xp.zeros_like(sq))
    G = X @ _mT(xp, X)
    c = G * (inv[:, :, None] * inv[:, None, :])
    c = 0.5 * (c + _mT(xp, c))
    c = xp.where(c >= _NEAR_ONE, xp.ones_like(c), c)
    n = F.shape[1]
    eye = xp.eye(n, dtype=xp.bool, device=device_of(F))[None, :, :]
    c = xp.where(eye, xp.where(inv > 0.0, xp.ones_like(inv), xp.zeros_like(inv))[:, :, None], c)
    return xp.where(c > 0.0, c, xp.zeros_like(c))



def sas(xp, F, m, penalty):
    """SAS's rows (B, m) of every batch of embeddings F (B, n, d), any namespace."""
    return penalised_greedy(xp, cosine_gram(xp, F), m, 0.0, 1.0, 1.0, 0.0, 1.0 if penalty else 0.0)


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """SAS on every batch of a stack: (order (B, m), sizes (B,), rho NaN (B, m), weights n / m (B, m))."""
    penalty = opts["params"]["penalty"]
    if name == "numba":
        return unweighted(sas_nb(np.ascontiguousarray(F), m, penalty), F.shape[1])
    from .._namespace import array_namespace

    return unweighted(sas(array_namespace(F), F, m, penalty), F.shape[1])
