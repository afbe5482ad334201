"""``strategy="clipcov"``: ClipCov (Joshi et al., AISTATS 2024), image-caption pairs for data-efficient CLIP.

ClipCov keeps the pairs whose subset preserves the cross-covariance of the two
embeddings, C = (1/n) sum_i x_i t_i^T, within each latent group (``groups``, or
k-means clusters of the image embeddings). The reference code's greedy scores
each pair by its own image-caption similarity plus its cross-similarity to the
group, minus its similarity to the pairs already picked. We run that greedy on
the objective itself: for a subset S with uniform weights,

    || (1/|S|) sum_{i in S} x_i t_i^T - C ||_F^2
        = (1/|S|^2) sum_{i,j in S} K_ij - (2/(|S| n)) sum_{i in S, j} K_ij + const,

with K_ij = <x_i, x_j> <t_i, t_j> (the inner product of x_i t_i^T and
x_j t_j^T). Step t (t pairs chosen) takes the pair s that makes the error of
the t + 1 pairs smallest: the largest gain
(2 (t + 1) / n) sum_j K_sj - K_ss - 2 sum_{i in S} K_is, the reference's three
terms (cross-similarity to the group, the pair's own term, the penalty), each
with the weight the objective gives it. Ties go to the lowest index. Every
prefix of the order is then itself a subset of small error (kernel herding's
rule). Why not the final size's weights 1/m from the first step: they weigh
the cross-similarity as if m pairs were already there, so the early picks pile
onto the group's centre; every chunk's subset is then biased the same way, and
over many groups and chunks those biases add up instead of cancelling (on
two-view Fashion-MNIST pairs that variant lost to random subsets at fraction
0.3, ``benchmarks/bench_family.py``). Weights are uniform (n / m).
:func:`cross_covariance_error` reports the objective.

``features=(image_emb, text_emb)`` reaches the kernels as [X | T]; memory
n x n within one batch or chunk only. Numba: :func:`clipcov_nb`; any
namespace: :func:`clipcov`.
"""

import numpy as np
from numba import njit, prange

from ._batch import penalised_greedy, penalised_greedy_nb, unweighted

__all__ = ["clipcov_nb", "clipcov", "cross_covariance_error", "run"]


@njit(cache=True, nogil=True)
def _pair_gram_nb(F, split):
    """K_ij = <x_i, x_j> <t_i, t_j> (n, n) of one batch [X | T] (n, d + d'), float64."""
    n, w = F.shape
    K = np.empty((n, n))
    for i in range(n):
        for j in range(i + 1):
            sx = 0.0
            for a in range(split):
                sx += np.float64(F[i, a]) * np.float64(F[j, a])
            st = 0.0
            for a in range(split, w):
                st += np.float64(F[i, a]) * np.float64(F[j, a])
            K[i, j] = sx * st
            K[j, i] = K[i, j]
    return K


@njit(cache=True, nogil=True, parallel=True)
def clipcov_nb(F, split, m):
    """ClipCov's rows (B, m) of every batch [X | T] of a stack F (B, n, d + d')."""
    nb = F.shape[0]
    order = np.empty((nb, m), dtype=np.int64)
    for bi in prange(nb):
        K = _pair_gram_nb(F[bi], split)
        penalised_greedy_nb(K, m, 2.0, 0.0, float(K.shape[0]), 1.0, 2.0, order[bi])
    return order


def pair_gram(xp, F, split):
    """K (B, n, n) of every batch: the twin of :func:`_pair_gram_nb`."""
    from .._agnostic.criterion import _mT

    X = xp.astype(F[..., :split], xp.float64)
    T = xp.astype(F[..., split:], xp.float64)
    K = (X @ _mT(xp, X)) * (T @ _mT(xp, T))
    return 0.5 * (K + _mT(xp, K))


def clipcov(xp, F, split, m):
    """ClipCov's rows (B, m) of every batch, any namespace (vectorised over batches)."""
    return penalised_greedy(xp, pair_gram(xp, F, split), m, 2.0, 0.0, float(F.shape[1]), 1.0, 2.0)


def cross_covariance_error(image_emb, text_emb, indices, weights=None):
    """||C_S - C||_F / ||C||_F: how far a subset's image-caption cross-covariance is from the full data's.

    C = (1/n) sum_i x_i t_i^T over the n rows of ``image_emb`` / ``text_emb``
    (NumPy-convertible, (n, d) and (n, d')); C_S = sum_{j} w_j x_sj t_sj^T /
    sum_j w_j over the selected rows ``indices`` (uniform ``weights`` by
    default). Computed in float64 on the host: d x d' memory.
    """
    X = np.asarray(image_emb, dtype=np.float64)
    T = np.asarray(text_emb, dtype=np.float64)
    idx = np.asarray(indices, dtype=np.int64)
    w = np.ones(idx.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    C = X.T @ T / X.shape[0]
    CS = (X[idx] * w[:, None]).T @ T[idx] / w.sum()
    return float(np.linalg.norm(CS - C) / np.linalg.norm(C))


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """ClipCov on every batch of a stack: (order (B, m), sizes (B,), rho NaN (B, m), weights n / m (B, m))."""
    split = opts["pair_split"]
    if name == "numba":
        return unweighted(clipcov_nb(np.ascontiguousarray(F), split, m), F.shape[1])
    from .._namespace import array_namespace

    return unweighted(clipcov(array_namespace(F), F, split, m), F.shape[1])
