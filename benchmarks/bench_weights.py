"""How GRAFT's subset weights behave before and after training, in one run (no timings).

    python benchmarks/bench_weights.py              # 40 batches of 128, 2 training epochs (about a minute)
    python benchmarks/bench_weights.py --markdown   # the table as Markdown, ready for the README

Data: Fashion-MNIST training images when the IDX files are installed (Debian package
``dataset-fashion-mnist``), else random features with random labels. A 784-256-10 MLP
(torch, seeded) is measured at initialisation and after ``--epochs`` epochs of SGD
(lr 0.1, batches of 128) on the whole training set. For 40 batches of 128 the subsets
come from ``graft_array.select`` (fraction 0.25, last-layer gradients); the weights of
each subset are fitted three ways against the batch gradient g:

* ``nnls, rescaled``: scipy's NNLS fit of g, then rescaled to sum to n (the plain rule);
* ``sum held, weight_reg=0``: ``select(..., weight_reg=0)``;
* ``sum held, weight_reg=0.01``: ``select``'s default.

Columns: the largest weight's share of its batch's total (median and max over the
batches), and the relative residual ||sum_j w_j g_j - g|| / ||g|| of the weighted
subset gradient (median), next to rho(m), the unconstrained projection residual that
no weighting can beat.
"""

import argparse
import os
import sys

import numpy as np

try:
    import graft_array as ga
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import graft_array as ga
from graft_array.datasets import fashion_mnist_available, load_fashion_mnist
from graft_array.testing import last_layer_gradients

BATCH, NB, FRACTION = 128, 40, 0.25


def data(seed=0):
    if fashion_mnist_available():
        X, y = load_fashion_mnist("train")
        return X, y, "Fashion-MNIST training set"
    rng = np.random.default_rng(seed)
    return rng.random((60_000, 784), dtype=np.float32), rng.integers(0, 10, 60_000), "random features (no Fashion-MNIST)"


def measure(net, X, y):
    import torch
    from scipy.optimize import nnls

    n = NB * BATCH
    with torch.no_grad():
        h = net[1](net[0](torch.from_numpy(X[:n])))
        e = torch.softmax(net[2](h), 1)
        e[torch.arange(n), torch.from_numpy(y[:n])] -= 1
    H, E = h.numpy().astype(np.float64), e.numpy().astype(np.float64)
    rows = {"nnls, rescaled": [], "sum held, weight_reg=0": [], "sum held, weight_reg=0.01": []}
    rhos = []
    for b in range(NB):
        sl = slice(b * BATCH, (b + 1) * BATCH)
        G = last_layer_gradients(E[sl], H[sl])
        g = G.sum(axis=0)
        for name, reg in (("sum held, weight_reg=0", 0.0), ("sum held, weight_reg=0.01", 0.01)):
            s = ga.select(X[sl], ga.LastLayerGrads(E[sl], H[sl]), fraction=FRACTION, weight_reg=reg,
                          random_state=0, return_info=True)
            w = np.asarray(s.weights)
            rows[name].append((w.max() / w.sum(), np.linalg.norm(G[s.indices].T @ w - g) / np.linalg.norm(g)))
        rhos.append(float(s.residuals[0, int(s.sizes[0]) - 1]))
        w, _ = nnls(G[s.indices].T, g)
        w = w * (BATCH / w.sum()) if w.sum() > 0 else np.full(len(w), BATCH / len(w))
        rows["nnls, rescaled"].append((w.max() / w.sum(), np.linalg.norm(G[s.indices].T @ w - g) / np.linalg.norm(g)))
    return {k: np.array(v) for k, v in rows.items()}, float(np.median(rhos))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    import torch

    X, y, source = data()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    out = [("initialisation",) + measure(net, X, y)]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(args.epochs):
        for i in range(0, len(X), BATCH):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(Xt[i:i + BATCH]), yt[i:i + BATCH]).backward()
            opt.step()
    out.append((f"after {args.epochs} epochs",) + measure(net, X, y))

    head = ["model", "weights", "largest share (median)", "largest share (max)", "fit residual (median)",
            "rho(m) (median)"]
    table = []
    for when, rows, rho in out:
        for name, v in rows.items():
            table.append([when, name, f"{np.median(v[:, 0]):.1%}", f"{v[:, 0].max():.1%}", f"{np.median(v[:, 1]):.3f}",
                          f"{rho:.3f}"])
    print(f"{source}; {NB} batches of {BATCH}, fraction {FRACTION}, 784-256-10 MLP")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in table:
            print("| " + " | ".join(r) + " |")
    else:
        wid = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, wid)))
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, wid)))


if __name__ == "__main__":
    main()
