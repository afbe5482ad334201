"""Throughput and quality of ``graft_array.select`` against the published GRAFT pipeline, in one run.

    python benchmarks/bench_select.py              # 51 200 samples in batches of 128 (about a minute)
    python benchmarks/bench_select.py --quick      # 40 batches: a smoke run
    python benchmarks/bench_select.py --markdown   # the table as Markdown, ready for the README

Data: the first 51 200 Fashion-MNIST training images (d = 784, float32 in [0, 1]) when
the IDX files are installed (Debian package ``dataset-fashion-mnist``), else uniform
random features of the same shape. Gradients: the last-layer gradients of a seeded,
untrained 784-64-10 ReLU network (embeddings h: 64, residuals e = softmax - onehot: 10),
passed factorised (``LastLayerGrads``), fraction 0.25.

Peer: a re-statement of the published per-batch pipeline: SVD of each batch, the
published greedy (``graft_array.testing.published_fast_maxvol``) for 3 candidate sizes
drawn from the same band, a pseudo-inverse residual of the batch's logit gradient
per candidate, the best candidate kept. It runs on a subset of the batches and is
reported as throughput; it is timed with BLAS at its default thread count and at
one thread, and the faster of the two is used (OpenBLAS threads slow it down badly
on this 2-core machine).

The third row selects on the gradients themselves (``select(None, grads)``: the
low-rank step on the last-layer gradients' factorised Gram instead of the pixels).

Also reported: our selection time per batch as a share of one training step
(forward, backward, SGD update) of a 784-256-10 MLP in torch on the same batch,
and the gradient residual rho = ||g - P_S g|| / ||g|| of our subsets against random
subsets of the same sizes (5 draws per batch). Nothing here asserts a timing.
"""

import argparse
import os
import platform
import sys
import warnings

import numpy as np

try:
    import graft_array
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import graft_array
from graft_array import LastLayerGrads
from graft_array._agnostic import criterion
from graft_array.datasets import fashion_mnist_available, load_fashion_mnist
from graft_array.testing import published_fast_maxvol

from _timing import best_of, fmt_time  # benchmarks/ is sys.path[0] when run as a script

FULL = dict(batches=400, peer_batches=40, budget_s=3.0)
QUICK = dict(batches=40, peer_batches=8, budget_s=0.5)
BATCH, CLASSES, EMBED, FRACTION, TARGET = 128, 10, 64, 0.25, 50.0


def make_data(nb, seed=0):
    """Features (nb, 128, 784) float32, labels, and the last-layer gradient sketch (E, H)."""
    rng = np.random.default_rng(seed)
    n = nb * BATCH
    if fashion_mnist_available():
        X, y = load_fashion_mnist("train")
        X, y, source = X[:n], y[:n], "Fashion-MNIST (first %d training images)" % n
    else:
        X = rng.random((n, 784), dtype=np.float32)
        y = rng.integers(0, CLASSES, n)
        source = "uniform random features (Fashion-MNIST not installed)"
    W1 = rng.standard_normal((784, EMBED)).astype(np.float32) / np.sqrt(784)
    W2 = rng.standard_normal((EMBED, CLASSES)).astype(np.float32) / np.sqrt(EMBED)
    H = np.maximum(X @ W1, 0.0)
    logits = H @ W2
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    E = P - np.eye(CLASSES, dtype=np.float32)[y]
    shape = (nb, BATCH)
    return X.reshape(shape + (784,)), y.reshape(shape), E.reshape(shape + (CLASSES,)), H.reshape(shape + (EMBED,)), source


def band():
    centre = FRACTION * BATCH
    return int(np.floor(0.5 * centre)), int(np.ceil(1.5 * centre))


def published_pipeline(F, E, seed=0):
    """The published per-batch pipeline, restated (see the module docstring). Returns the chosen sizes."""
    rng = np.random.default_rng(seed)
    lo, hi = band()
    sizes = []
    for b in range(F.shape[0]):
        U, _, _ = np.linalg.svd(F[b].astype(np.float64), full_matrices=False)
        Gl = E[b].astype(np.float64)  # logit gradients, as published
        g = Gl.sum(axis=0)
        best = (np.inf, 0)
        for k in rng.integers(lo, hi + 1, size=3):
            rows = np.unique(published_fast_maxvol(U, int(k)))
            A = Gl[rows].T
            res = np.linalg.norm(g - A @ (np.linalg.pinv(A) @ g)) / max(np.linalg.norm(g), 1e-300)
            best = min(best, (res, len(rows)))
        sizes.append(best[1])
    return np.array(sizes)


def time_peer(F, E, budget_s):
    """Best per-batch time of the peer, BLAS at its default threads and at one thread; (seconds, label)."""
    from threadpoolctl import threadpool_limits

    t_default, _ = best_of(lambda: published_pipeline(F, E), min_repeats=2, budget_s=budget_s)
    with threadpool_limits(1, user_api="blas"):
        t_one, _ = best_of(lambda: published_pipeline(F, E), min_repeats=2, budget_s=budget_s)
    if t_one < t_default:
        return t_one / F.shape[0], "BLAS 1 thread (faster than default: %s per batch)" % fmt_time(t_default / F.shape[0])
    return t_default / F.shape[0], "BLAS default threads (1 thread: %s per batch)" % fmt_time(t_one / F.shape[0])


def time_train_step(F, y):
    """Best time of one forward/backward/SGD step of a 784-256-10 MLP on one batch of 128 (torch, CPU)."""
    import torch

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xs = [torch.from_numpy(np.ascontiguousarray(F[b])) for b in range(min(20, F.shape[0]))]
    ys = [torch.from_numpy(y[b]) for b in range(len(xs))]
    loss_fn = torch.nn.CrossEntropyLoss()

    def steps():
        for xb, yb in zip(xs, ys):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            opt.step()

    t, _ = best_of(steps, budget_s=1.0)
    return t / len(xs), torch.__version__, torch.get_num_threads()


def residual_at(E, H, piv, sizes):
    """rho(sizes[b]) of each batch for pivot orders piv (B, K), through the generic criterion code."""
    K, bv, gg = criterion.gram_last_layer(np, E, H, piv)
    rho, _ = criterion.rho_curve(np, K, bv, gg)
    return rho[np.arange(len(sizes)), sizes - 1]


def random_residuals(E, H, sizes, draws=5, seed=0):
    rng = np.random.default_rng(seed)
    nb, n = E.shape[:2]
    K = int(sizes.max())
    out = np.zeros(nb)
    for _ in range(draws):
        piv = np.argsort(rng.random((nb, n)), axis=1)[:, :K]
        out += residual_at(E, H, piv, sizes)
    return out / draws


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 batches: a smoke run")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    F, y, E, H, source = make_data(cfg["batches"])
    grads = LastLayerGrads(E, H)
    nb, n = F.shape[:2]
    total = nb * n
    import numba

    print("# graft_array.select benchmark")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"{platform.system()}; Python {platform.python_version()}")
    print(f"# graft_array {graft_array.__version__}, numpy {np.__version__}, numba {numba.__version__} "
          f"({numba.get_num_threads()} threads)")
    print(f"# data: {source}; {nb} batches of {n}, d = {F.shape[2]}; gradients: last layer of a seeded 784-"
          f"{EMBED}-{CLASSES} net, fraction {FRACTION}, tol 0.1 (default)")
    print("# timing: best of N runs after a warm-up (time.perf_counter); absolute times drift, ratios hold")

    peer_s, peer_cfg = time_peer(F[: cfg["peer_batches"]], E[: cfg["peer_batches"]], cfg["budget_s"])
    peer_rate = n / peer_s
    try:
        step_s, torch_version, torch_threads = time_train_step(F, y)
    except ImportError:
        step_s, torch_version, torch_threads = float("nan"), None, 0

    rows = []
    for method, on in (("deim", F), ("volume", F), ("deim", None)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, s = best_of(lambda: graft_array.select(on, grads, fraction=FRACTION, method=method, random_state=0,
                                                      return_info=True), budget_s=cfg["budget_s"])
        sizes = np.asarray(s.sizes)
        rho_ours = np.asarray(s.residuals)[np.arange(nb), sizes - 1]
        rho_rand = random_residuals(E, H, sizes)
        rate = total / t
        call = "graft_array.select" if on is not None else "graft_array.select(None, grads)"
        rows.append([f"{call}, method={method} ({s.solver} r={s.rank}, {s.backend})", fmt_time(t),
                     f"{rate:,.0f}", f"{rate / peer_rate:.1f}x", f"{sizes.mean():.1f}",
                     f"{rho_ours.mean():.3f}", f"{rho_rand.mean():.3f}",
                     f"{100 * np.mean(rho_ours < rho_rand):.1f}% (>= 80%: "
                     f"{'met' if np.mean(rho_ours < rho_rand) >= 0.8 else 'NOT met'})",
                     f"{(t / nb) / step_s:.2f}",
                     ">=50x: " + ("met" if rate / peer_rate >= TARGET else "NOT met")])
    peer_sizes = published_pipeline(F[: cfg["peer_batches"]], E[: cfg["peer_batches"]])
    rows.append([f"published pipeline, restated ({cfg['peer_batches']} batches)", fmt_time(peer_s * nb) + " (extrap.)",
                 f"{peer_rate:,.0f}", "1.0x", f"{peer_sizes.mean():.1f}", "-", "-", "-", f"{peer_s / step_s:.2f}", ""])

    head = ["Pipeline", f"Time for {total:,} samples", "Samples/s", "Speed-up", "Mean size",
            "Mean rho (ours)", "Mean rho (random, same sizes)", "Batches below random", "Selection / train step",
            "Target"]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        for r in [head] + rows:
            print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    print(f"# peer: {peer_cfg}")
    if torch_version is None:
        print("# train step: torch is not installed, so the 'Selection / train step' column is nan")
    else:
        print(f"# train step: 784-256-10 MLP, batch {n}, forward + backward + SGD, torch {torch_version} "
              f"({torch_threads} threads): {fmt_time(step_s)} per step")
    print("# rho = ||g - P_S g|| / ||g|| for the last-layer gradient g of the batch (lower is better); "
          "random: mean of 5 uniform draws of the same size per batch; 'batches below random': the share of "
          "batches whose subset's rho is below that mean")


if __name__ == "__main__":
    main()
