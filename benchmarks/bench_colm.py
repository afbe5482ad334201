"""CoLM's mini-batch coresets on imbalanced sources (Fashion-MNIST): do small sources survive the selection?

    python benchmarks/bench_colm.py                  # 300 steps, seeds 0 1 2 (about 5-8 minutes on 2 cores)
    python benchmarks/bench_colm.py --quick          # 40 steps, 1 seed: a smoke run

The training set is Fashion-MNIST's 60 000 images cut into four sources of very
different sizes (a fixed subsample, ``--data-seed``, the same for every seed):

    source 0: classes 0-5, every image       36 000 (6 000 per class)
    source 1: classes 6-7, 1/10 of each       1 200 (  600 per class)
    source 2: class 8,     1/40                 150
    source 3: class 9,     1/100                 60
                                             37 410 in all

Every method trains the same seeded MLP (784-256-10, ReLU; Adam, lr 1e-3, as in
``bench_training.py``) for the same number of steps on the same sequence of
large batches (512 drawn without replacement, epoch after epoch, by a generator
seeded with the seed). A step's expected composition is 492.7 / 16.4 / 2.1 / 0.8
samples of sources 0 / 1 / 2 / 3. Each selecting method keeps 128 of the 512
(``fraction=0.25``) and takes one Adam step on ``mean_j w_j loss_j`` over them,
the weights ``w`` of ``select`` normalised to mean 1:

* ``full-512``: the whole large batch (the upper reference; 4x the gradient work).
* ``random``: 128 of the 512, uniformly (weights 1).
* ``craig``: plain facility location (``strategy="craig"``, no sources) on the
  exact last-layer gradients ``LastLayerGrads(p - y, h)`` of the batch.
* ``colm``: ``strategy="colm"`` with ``sources=`` the batch's source ids, one
  :class:`graft_array.ColmState` kept across the steps, default
  ``strategy_params`` (``small_sources="auto"``: a source is kept whole when
  n_s * S <= 128, which here keeps sources 1-3 whole in every batch).
* ``colm-zo``: the same, on the zeroth-order gradients of
  :func:`graft_array.adapters.colm.zeroth_order_grads` (two extra forwards of the
  batch at w +- 1e-3 z, a fresh Gaussian z each step), passed as plain grads.

Reported after the last step, mean +- std (sample std, ddof=1) over the seeds:
test accuracy on the whole test set (1 000 images per class, balanced, unlike
the training set) and on the test images of each source's classes; the mean
number of rows of the small sources (1-3) in each step's 128; ``grad err``, the
relative error ||(1/128) sum_j w_j g_j - (1/512) sum_i g_i|| / ||(1/512) sum_i g_i||
of the weighted rows' mean gradient against the large batch's, on the exact
last-layer gradients, every ``--probe-every`` steps (untimed); the wall time of
the training loop (evaluation and probes excluded) and the share of it spent
computing the selection's gradients and selecting. Nothing here asserts anything.
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

#: (classes, kept share) of each source
SOURCES = (((0, 1, 2, 3, 4, 5), 1.0), ((6, 7), 1 / 10), ((8,), 1 / 40), ((9,), 1 / 100))
METHODS = ("full-512", "random", "craig", "colm", "colm-zo")


def make_sources(X, y, data_seed):
    """The imbalanced training set: (X, y, source id) with each source's classes subsampled by its share."""
    rng = np.random.default_rng(data_seed)
    keep, src = [], []
    for s, (classes, share) in enumerate(SOURCES):
        for c in classes:
            rows = np.flatnonzero(y == c)
            m = int(round(share * rows.size))
            keep.append(np.sort(rng.choice(rows, size=m, replace=False)))
            src.append(np.full(m, s, dtype=np.int64))
    keep = np.concatenate(keep)
    return X[keep], y[keep], np.concatenate(src)


def source_of_class():
    out = np.empty(10, dtype=np.int64)
    for s, (classes, _) in enumerate(SOURCES):
        out[list(classes)] = s
    return out


def batches(n, batch, gen, torch):
    """Large batches of ``batch`` indices drawn without replacement, epoch after epoch (the tail of an epoch
    that does not fill a batch is dropped)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i:i + batch]


def run(method, data, *, seed, steps, batch, k, lr, probe_every=10):
    """Train one model; (accuracies per group, small-source rows per step, wall s, selection s, gradient error)."""
    import torch
    import torch.nn.functional as tF

    from graft_array import ColmState, LastLayerGrads, select
    from graft_array.adapters.colm import zeroth_order_grads
    from graft_array.adapters.torch import capture, loss_residuals
    from graft_array.training import make_model

    Xtr, ytr, str_, Xte, yte = data
    net = make_model("mlp", (1, 28, 28), 10, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order = batches(len(Xtr), batch, torch.Generator().manual_seed(seed), torch)
    state = ColmState()
    frac = k / batch
    small_rows = 0
    sel_s = probe_s = 0.0
    errs = []
    t0 = time.perf_counter()
    for step in range(steps):
        idx = next(order)
        xb, yb, sb = Xtr[idx], ytr[idx], str_[idx]
        ts = time.perf_counter()
        if method == "full-512":
            pick, w = None, None
        elif method == "random":
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            pick, w = torch.randperm(batch, generator=g)[:k], None
        else:
            if method == "colm-zo":
                grads = zeroth_order_grads(net, xb, yb, random_state=seed * 1_000_003 + step)
            else:
                h, logits = capture(net, xb)
                grads = LastLayerGrads(loss_residuals(logits, yb), h)
            kw = dict(fraction=frac, return_info=True, random_state=seed * 1_000_003 + step)
            if method == "craig":
                s = select(None, grads, strategy="craig", **kw)
            else:
                s = select(None, grads, strategy="colm", sources=sb.numpy(), strategy_params={"state": state}, **kw)
            pick = s.indices
            w = s.weights.to(torch.float32)
            w = w / w.mean()
        sel_s += time.perf_counter() - ts
        if probe_every and step % probe_every == 0:  # untimed: how well the weighted rows match the batch gradient
            tp = time.perf_counter()
            errs.append(gradient_error(net, xb, yb, pick, w, capture, loss_residuals, torch))
            probe_s += time.perf_counter() - tp
        if pick is not None:
            sb, xb, yb = sb[pick], xb[pick], yb[pick]
        small_rows += int((sb > 0).sum())
        losses = tF.cross_entropy(net(xb), yb, reduction="none")
        loss = losses.mean() if w is None else (w * losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    wall = time.perf_counter() - t0 - probe_s
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(Xte[i:i + 2500]).argmax(1) for i in range(0, len(Xte), 2500)])
    right = (pred == yte).numpy()
    groups = source_of_class()[yte.numpy()]
    acc = [float(right.mean())] + [float(right[groups == s].mean()) for s in range(len(SOURCES))]
    return acc, small_rows / steps, wall, sel_s, float(np.mean(errs)) if errs else float("nan")


def gradient_error(net, xb, yb, pick, w, capture, loss_residuals, torch):
    """||(1/k) sum_j w_j g_j - (1/n) sum_i g_i|| / ||(1/n) sum_i g_i||: the trained-on estimate against the large
    batch's mean gradient, on the exact last-layer gradients e_i (x) [h_i; 1] (float64)."""
    h, logits = capture(net, xb)
    e = loss_residuals(logits, yb).double()
    hx = torch.cat([h.double(), torch.ones(h.shape[0], 1, dtype=torch.float64)], dim=1)
    full = (e.T @ hx) / len(yb)
    if pick is None:
        return 0.0
    ww = torch.ones(len(pick), dtype=torch.float64) if w is None else w.double()
    est = ((e[pick] * ww[:, None]).T @ hx[pick]) / len(pick)
    return float(torch.linalg.norm(est - full) / torch.linalg.norm(full))


def fmt(vals, scale=100.0, digits=1):
    v = np.asarray(vals, dtype=np.float64) * scale
    sd = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():.{digits}f} +- {sd:.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared machine)")
    ap.add_argument("--probe-every", type=int, default=10,
                    help="measure the gradient error every this many steps (untimed; 0: never)")
    ap.add_argument("--quick", action="store_true", help="40 steps, seed 0")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = 40, [0]

    import torch

    from graft_array.datasets import load_fashion_mnist

    torch.set_num_threads(args.threads)
    Xtr, ytr = load_fashion_mnist("train")
    Xte, yte = load_fashion_mnist("test")
    Xs, ys, src = make_sources(Xtr, ytr, args.data_seed)
    data = (torch.as_tensor(Xs), torch.as_tensor(ys), torch.as_tensor(src), torch.as_tensor(Xte), torch.as_tensor(yte))
    counts = np.bincount(src, minlength=len(SOURCES))
    print(f"graft_array {graft_array.__version__}, torch {torch.__version__} ({args.threads} thread(s)), "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"Fashion-MNIST imbalanced sources (data seed {args.data_seed}): " + ", ".join(
        f"source {s} = classes {','.join(map(str, c))} x {sh:g} -> {n}" for s, ((c, sh), n) in
        enumerate(zip(SOURCES, counts))) + f"; {len(ys)} in all")
    print(f"MLP 784-256-10, Adam lr {args.lr:g}, {args.steps} steps of a {args.batch} batch "
          f"({args.steps * args.batch / len(ys):.2f} epochs of large batches), {args.k} selected per step, "
          f"seeds {args.seeds}")
    # warm-up: Numba compiles (or loads its cache) outside the timed runs
    for m in ("colm", "craig", "colm-zo"):
        run(m, data, seed=0, steps=2, batch=args.batch, k=args.k, lr=args.lr, probe_every=1)

    results = {m: [] for m in args.methods}
    t_all = time.perf_counter()
    for seed in args.seeds:
        for m in args.methods:
            acc, small, wall, sel, err = run(m, data, seed=seed, steps=args.steps, batch=args.batch, k=args.k,
                                             lr=args.lr, probe_every=args.probe_every)
            results[m].append((acc, small, wall, sel, err))
            print(f"  seed {seed} {m:9s} acc {100 * acc[0]:.2f}  per source " +
                  " / ".join(f"{100 * a:.1f}" for a in acc[1:]) +
                  f"  small rows {small:.1f}  grad err {err:.3f}  wall {wall:.1f}s  selection {100 * sel / wall:.0f}%",
                  flush=True)
    head = ["method", "test acc %", "src0 cls0-5", "src1 cls6-7", "src2 cls8", "src3 cls9",
            "small rows/step", "grad err", "wall s", "sel share %"]
    rows = []
    for m in args.methods:
        r = results[m]
        accs = np.array([x[0] for x in r])
        rows.append([m] + [fmt(accs[:, j]) for j in range(accs.shape[1])] +
                     [fmt([x[1] for x in r], 1.0), fmt([x[4] for x in r], 1.0, 3), fmt([x[2] for x in r], 1.0),
                      fmt([x[3] / x[2] for x in r], 100.0, 0)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print()
    print(f"Mean +- std over seeds {args.seeds} ({args.steps} steps; per-source columns: test accuracy % on the "
          "test images of that source's classes, 1000 per class; small rows/step: rows of sources 1-3 among the "
          f"{args.k} trained on, for full-512 among the {args.batch}; grad err: relative error of the weighted "
          f"selection's mean last-layer gradient against the {args.batch}'s, every {args.probe_every} steps; wall s: "
          "the training loop without evaluation and without the grad err probes)")
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
