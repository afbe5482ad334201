"""ClipCov's objective and SAS's centrality, measured directly, against random subsets of the same sizes.

    python benchmarks/bench_family.py            # Fashion-MNIST pairs (about a minute on 2 cores)
    python benchmarks/bench_family.py --quick    # digits, a smoke run in seconds

No image-caption data works offline here, so the pairs are two views of one
Fashion-MNIST image: x_i = the top half's PCA embedding, t_i = the bottom half's
(each 32-D, unit norm, as CLIP's embeddings are). Both depend on the item, so
their cross-covariance C = (1/n) sum_i x_i t_i^T is far from zero.

* ClipCov: ``select(features=(X, T), strategy="clipcov")`` (latent groups from
  k-means, the default), and the relative error ||C_S - C||_F / ||C||_F of the
  subset (:func:`graft_array.cross_covariance_error`); random: the mean and
  spread over 20 uniform subsets of exactly the same size; SAS on X and CRAIG
  on X (as gradients), for reference.
* SAS: the mean thresholded cosine similarity of the chosen embeddings to the
  rest of their group (what SAS maximises), against random subsets.

Times: best of 3 calls, ratios against nothing (no peer exists offline); no
assertion anywhere.
"""

import argparse
import os
import sys
import time

import numpy as np

try:
    import graft_array as ga
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import graft_array as ga


def views(quick):
    """(X, T) two unit-norm 32-D views of each image, and the labels."""
    if quick:
        from sklearn.datasets import load_digits

        img, y = load_digits(return_X_y=True)
        img = img.reshape(-1, 8, 8)
    else:
        from graft_array.datasets import load_fashion_mnist

        img, y = load_fashion_mnist("train")[:2]
        img = np.asarray(img, dtype=np.float64).reshape(-1, 28, 28)[:20000]
        y = np.asarray(y)[:20000]
    h = img.shape[1] // 2
    out = []
    for part in (img[:, :h].reshape(len(img), -1), img[:, h:].reshape(len(img), -1)):
        part = part - part.mean(0)
        _, _, vt = np.linalg.svd(part[:5000], full_matrices=False)
        e = part @ vt[: min(32, vt.shape[0])].T
        out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return out[0], out[1], y


def timed(fn):
    best, res = np.inf, None
    for _ in range(3):
        t = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t)
    return best, res


def centrality(X, idx, groups):
    """Mean over the chosen rows of sum_j max(0, cos(x_i, x_j)) / n_g within the row's group."""
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    out = []
    for i in idx:
        g = groups == groups[i]
        out.append(np.maximum(Xn[g] @ Xn[i], 0.0).mean())
    return float(np.mean(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    X, T, y = views(args.quick)
    n = len(X)
    B = 1024  # the call's rows go in batches of B (each latent group cut into chunks of <= B rows)
    nb = n // B
    X, T, y = X[: nb * B], T[: nb * B], y[: nb * B]
    Xs, Ts = X.reshape(nb, B, -1), T.reshape(nb, B, -1)
    rng = np.random.default_rng(0)
    print(f"# data: {'digits' if args.quick else 'Fashion-MNIST'} two-view pairs, n = {len(X)}, 32-D unit-norm views;"
          f" batches of {B}; random: 20 subsets of the same size")
    print("| fraction | method | rows | cross-cov rel. error | vs random (mean +- std) | SAS centrality | "
          "vs random | time |")
    print("|---|---|---|---|---|---|---|---|")
    groups = ga._family.kmeans_labels(Xs, None, 10, 0).reshape(-1)  # SAS's / ClipCov's default latent groups
    for frac in (0.05, 0.1, 0.3):
        runs = {
            "clipcov": lambda: ga.select((Xs, Ts), None, strategy="clipcov", fraction=frac, random_state=0),
            "sas": lambda: ga.select(Xs, None, strategy="sas", fraction=frac, random_state=0),
            "craig (on X)": lambda: ga.select(Xs, Xs, strategy="craig", fraction=frac, random_state=0),
        }
        for name, fn in runs.items():
            t, idx = timed(fn)
            idx = np.asarray(idx)
            err = ga.cross_covariance_error(X, T, idx)
            rand = [ga.cross_covariance_error(X, T, rng.choice(len(X), len(idx), replace=False)) for _ in range(20)]
            cen = centrality(X, idx, groups)
            rcen = [centrality(X, rng.choice(len(X), len(idx), replace=False), groups) for _ in range(5)]
            print(f"| {frac} | {name} | {len(idx)} | {err:.4f} | {np.mean(rand):.4f} +- {np.std(rand):.4f} "
                  f"({err / np.mean(rand):.2f}x) | {cen:.4f} | {np.mean(rcen):.4f} | {t:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
