"""Augmentation coresets (Liu & Mirzasoleiman, NeurIPS 2022) on Fashion-MNIST: what augmenting a coreset buys.

    python benchmarks/bench_augment.py                      # CNN, 20k rows, 4 epochs, fractions 0.1 0.3, 3 seeds
    python benchmarks/bench_augment.py --model mlp --epochs 8
    python benchmarks/bench_augment.py --quick              # 4k rows, 2 epochs, 1 seed: a smoke run

Every method trains the same seeded model (``graft_array.training.make_model``)
with Adam, the same learning rate, batch size and number of epochs, through a
``DataLoader`` (shuffled by its own seeded generator) over:

* ``none``: the training rows only;
* ``augment-all``: the rows plus an augmented copy of every row (2n items per
  epoch; ``AugmentedCoresetDataset`` with ``strategy="random"``, ``fraction=1``);
* ``random``: the rows plus augmented copies of a class-balanced uniform random
  subset of k rows, redrawn every ``refresh_every`` epochs (``strategy="random"``,
  no forward pass);
* ``craig``: the rows plus augmented copies of the CRAIG coreset of k rows (per
  class facility location on the last-layer gradients, a forward pass over the
  rows every ``refresh_every`` epochs): the augmentation coreset.

The strong augmentation (torch ops on one image, drawn from the per-sample,
per-epoch generator that ``AugmentedCoresetDataset`` hands it): random crop of
the image padded by 4 pixels, horizontal flip with probability 1/2, Gaussian
noise (sigma 0.1), clipped to [0, 1]. All weights are 1.

Wall time: the whole training (selection passes, augmentation and data loading
included), not the test evaluation; ratios are against ``none`` measured in the
same run, with the methods interleaved within each seed. torch runs with
``--threads`` threads (default 1: on a small shared machine two threads that
contend with other jobs made an epoch many times slower than one). Nothing here
asserts anything.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

try:
    import graft_array
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import graft_array
from graft_array import training


def strong_augment(x, generator):
    """Random crop (zero padding 4) + horizontal flip (p = 1/2) + Gaussian noise (0.1), clipped to [0, 1].

    ``x``: one image (c, h, w); ``generator``: the only source of randomness.
    """
    import torch
    import torch.nn.functional as tF

    pad = 4
    h, w = x.shape[-2:]
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    out = tF.pad(x, (pad, pad, pad, pad))[..., i:i + h, j:j + w]
    if int(torch.randint(0, 2, (), generator=generator)):
        out = out.flip(-1)
    return (out + 0.1 * torch.randn(out.shape, generator=generator, dtype=out.dtype)).clamp_(0.0, 1.0)


def _accuracy(model, X, y, batch=1000):
    import torch

    model.eval()
    with torch.no_grad():
        correct = sum(int((model(X[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(X), batch))
    model.train()
    return correct / len(X)


def run(method, fraction, data, *, model, epochs, batch_size, lr, refresh_every, selection_batch, seed):
    """Train once; (test accuracy, wall seconds, selection seconds, augmented items in the last epoch)."""
    import torch
    import torch.nn.functional as tF
    from torch.utils.data import DataLoader, TensorDataset

    from graft_array.adapters.augment import AugmentedCoresetDataset

    Xtr, ytr, Xte, yte = data
    net = training.make_model(model, tuple(Xtr.shape[1:]), int(ytr.max()) + 1, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    base = TensorDataset(Xtr, ytr)
    if method == "none":
        ds = base
    else:
        strategy = "craig" if method == "craig" else "random"
        ds = AugmentedCoresetDataset(base, net, augment=strong_augment, fraction=fraction, strategy=strategy,
                                     class_balance=method != "augment-all", refresh_every=refresh_every,
                                     batch_size=selection_batch, random_state=seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if ds is not base:
            ds.set_epoch(epoch)  # re-selects every refresh_every epochs; fresh augmentations every epoch
        for xb, yb in DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen):
            loss = tF.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    wall = time.perf_counter() - t0
    sel = 0.0 if ds is base else ds.stats["pass_seconds"]
    k = 0 if ds is base else ds.k
    return _accuracy(net, Xte, yte), wall, sel, k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    ap.add_argument("--rows", type=int, default=20000, help="training rows (a seeded class-mixed random subset)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--refresh-every", type=int, default=2, help="epochs between coreset selections")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.3])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--selection-batch", type=int, default=512, help="rows per CRAIG problem (per class chunk)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="4000 rows, 2 epochs, 1 seed (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.seeds = 4000, 2, 1
    import torch

    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte, desc = training.load_data("fashion-mnist")
    rows = np.sort(np.random.default_rng(0).choice(len(Xtr), size=min(args.rows, len(Xtr)), replace=False))
    data = (torch.as_tensor(Xtr[rows]), torch.as_tensor(ytr[rows]), torch.as_tensor(Xte), torch.as_tensor(yte))
    cfg = dict(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
               refresh_every=args.refresh_every, selection_batch=args.selection_batch)
    print(f"# graft_array {graft_array.__version__} augmentation-coreset benchmark, {time.strftime('%Y-%m-%d')}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; Python "
          f"{platform.python_version()}; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"# data: {desc}; training on {len(rows)} rows, testing on {len(Xte)}")
    print(f"# {args.model}, {args.epochs} epochs, Adam lr {args.lr:g}, batch {args.batch_size}, coreset every "
          f"{args.refresh_every} epochs (CRAIG per class, chunks of {args.selection_batch}), {args.seeds} seed(s); "
          "augmentation: crop (pad 4) + flip + noise 0.1")
    sys.stdout.flush()

    # untimed warm-up: Numba's first compile (cached on disk after) and torch's first steps
    small = tuple(a[:512] for a in data[:2]) + data[2:]
    for m in ("none", "craig", "random"):
        run(m, 0.1, small, **dict(cfg, epochs=1, refresh_every=1), seed=0)

    jobs = [("none", 0.0), ("augment-all", 1.0)]
    jobs += [(m, f) for f in args.fractions for m in ("random", "craig")]
    results = {}
    t_all = time.perf_counter()
    for seed in range(args.seeds):
        for method, f in jobs:
            acc, wall, sel, k = run(method, f, data, **cfg, seed=seed)
            results.setdefault((method, f), []).append((acc, wall, sel, k))
            print(f"  seed {seed} {method:<11} {f:<4g} acc {100 * acc:.2f}%  wall {wall:6.1f} s  "
                  f"selection {sel:5.1f} s  k {k}", file=sys.stderr, flush=True)
    none_wall = float(np.mean([r[1] for r in results[("none", 0.0)]]))

    head = ["method", "fraction", "k (augmented)", "test acc (mean +- std)", "wall time (mean)", "vs none",
            "selection (mean)"]
    lines = []
    for (method, f), rs in results.items():
        acc = np.array([r[0] for r in rs])
        wall = np.array([r[1] for r in rs])
        std = acc.std(ddof=1) if len(acc) > 1 else 0.0
        lines.append([method, "-" if method == "none" else f"{f:g}", str(int(np.mean([r[3] for r in rs]))),
                      f"{100 * acc.mean():.2f} +- {100 * std:.2f}", f"{wall.mean():.1f} s",
                      f"{wall.mean() / none_wall:.2f}x", f"{np.mean([r[2] for r in rs]):.1f} s"])
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    print()
    print(fmt(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in lines:
        print(fmt(r))
    print(f"\n# {time.perf_counter() - t_all:.0f} s in all (warm-up excluded); k: augmented items per epoch "
          "(the last epoch's coreset); selection: the coreset passes (forward + select) within the wall time")


if __name__ == "__main__":
    main()
