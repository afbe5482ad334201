"""``graft-array example``: the core on synthetic data, no training (no torch needed).

Builds a deterministic 20 000 x 32 matrix of sample coordinates (orthonormal
columns, as GRAFT's low-rank features are), selects 32 rows with each method and
prints the rows' log-volume and the time taken; then runs the whole GRAFT step
(``select``) on 64 batches of 128 synthetic samples with last-layer gradients of a
seeded linear softmax model, and compares the gradient residual of its subsets
with random subsets of the same sizes. The training comparison is ``graft-array demo``.
"""

import argparse
import time

import numpy as np

import graft_array as ga


def _log_volume(V, rows):
    S = V[rows].astype(np.float64)
    sign, ld = np.linalg.slogdet(S @ S.T)
    return 0.5 * ld if sign > 0 else float("-inf")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="graft-array example", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="number of samples (default 20000)")
    parser.add_argument("--rank", type=int, default=32, help="columns of V = rows selected (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    V, _ = np.linalg.qr(rng.standard_normal((args.rows, args.rank)))
    print(f"graft_array {ga.__version__}: selecting {args.rank} of {args.rows} rows (backend {ga.which_backend(V)})")
    random_rows = rng.choice(args.rows, args.rank, replace=False)
    print(f"{'method':<22}{'log-volume':>12}{'seconds':>10}")
    print(f"{'random rows':<22}{_log_volume(V, random_rows):>12.2f}{'':>10}")
    for method, refine in [("deim", False), ("deim", True), ("volume", False), ("tournament", False)]:
        ga.maxvol(V[:200], min(args.rank, 200), method=method, refine=refine)  # compile once
        t0 = time.perf_counter()
        rows = ga.maxvol(V, args.rank, method=method, refine=refine)
        dt = time.perf_counter() - t0
        label = method + (" + refine" if refine else "")
        print(f"{label:<22}{_log_volume(V, rows):>12.2f}{dt:>10.4f}")
    _select_example(rng)
    return 0


def _select_example(rng, batches=64, n=128, d=256, classes=10):
    """GRAFT's select on synthetic clustered data; residual of its subsets vs random ones."""
    from graft_array._agnostic import criterion

    centres = rng.standard_normal((classes, d))
    y = rng.integers(0, classes, (batches, n))
    X = (centres[y] + 0.8 * rng.standard_normal((batches, n, d))).astype(np.float32)
    W = rng.standard_normal((d, classes)).astype(np.float32) / np.sqrt(d)
    logits = X @ W
    P = np.exp(logits - logits.max(axis=-1, keepdims=True))
    P /= P.sum(axis=-1, keepdims=True)
    E = P - np.eye(classes, dtype=np.float32)[y]
    grads = ga.LastLayerGrads(E, X)
    ga.select(X[:2], ga.LastLayerGrads(E[:2], X[:2]), random_state=0)  # compile once
    t0 = time.perf_counter()
    s = ga.select(X, grads, fraction=0.25, random_state=0, return_info=True)
    dt = time.perf_counter() - t0
    sizes = np.asarray(s.sizes)
    rho = np.asarray(s.residuals)[np.arange(batches), sizes - 1]
    piv = np.argsort(rng.random((batches, n)), axis=1)[:, : sizes.max()]
    K, b, gg = criterion.gram_last_layer(np, E, X, piv)
    rho_random, _ = criterion.rho_curve(np, K, b, gg)
    rho_random = rho_random[np.arange(batches), sizes - 1]
    print(f"\nselect: {batches} batches of {n} samples (d = {d}, {classes} classes) in {dt:.3f} s "
          f"({s.solver} low rank r = {s.rank}, {s.backend})")
    print(f"  mean subset size {sizes.mean():.1f} of {n}; gradient residual ||g - P_S g|| / ||g||: "
          f"GRAFT {rho.mean():.3f}, random subsets of the same sizes {rho_random.mean():.3f}")
