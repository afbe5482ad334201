"""Where one selection pass of ``GraftEpochSampler`` spends its time, against a training epoch.

    python benchmarks/bench_pass.py                  # Fashion-MNIST, the MLP and the CNN of bench_training
    python benchmarks/bench_pass.py --models mlp     # one of them
    python benchmarks/bench_pass.py --quick          # digits, a smoke run

One pass (the training benchmark's epoch mode: selection batches of 128, 64
batches per ``select`` call, fraction 0.3, band 0) is cut into stages measured
one after another on the same data and model, each the best of ``--repeats``:

* loading: iterating the pass's DataLoader alone (collate, no model);
* forward + capture: the no-grad forward with the embedding hook and the
  loss residuals (:meth:`_Sketcher.sketch`), in the pass's forward batches;
* select, per stage: ``select`` on the captured arrays, in the pass's calls,
  with less and less of GRAFT switched on, so that each difference is one stage:
  the baseline ``strategy="random"`` (validation, output), features only
  (+ low rank + MaxVol), and with gradients (+ criterion + weights); once on the
  embeddings (``graft``) and once on the gradients (``graft-grad``);
* the whole pass (``sampler.refresh()``), and a training epoch on the full
  data (forward, backward, Adam step) for scale;
* thread contention: the select calls again with Numba held to one thread.

Model weights are the seeded initial ones (a pass costs the same at any point
of training). Absolute times drift on these machines; the shares and the
ratios to a training epoch, measured in the same run, are what carry over.
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
from graft_array import LastLayerGrads, select, training

FRACTION = 0.3
BATCH = 128  # selection batch
PER_CALL = 64  # selection batches per select call (GraftEpochSampler's default)
PER_FORWARD = 8  # selection batches per forward (the sampler's eval-mode forward)


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def captured(sampler, X, y):
    """The pass's captured arrays, per forward batch: (features, residuals, embeddings) as torch tensors."""
    sk = sampler._sketch
    out = []
    step = BATCH * PER_FORWARD
    for a in range(0, len(X), step):
        F, (e, h) = sk.sketch(X[a:a + step], y[a:a + step])
        out.append((F, e, h))
    return out


def select_calls(parts, *, features, strategy="graft", grads=True):
    """``select`` over the captured arrays in the pass's calls of PER_CALL batches of BATCH rows."""
    import torch

    F = torch.cat([p[0] for p in parts])
    E = torch.cat([p[1] for p in parts])
    H = torch.cat([p[2] for p in parts])
    n = (len(F) // BATCH) * BATCH  # whole batches (the pass's ragged last batch is left out here)
    F, E, H = (t[:n].reshape(n // BATCH, BATCH, -1) for t in (F, E, H))

    def run():
        for b in range(0, F.shape[0], PER_CALL):
            g = LastLayerGrads(E[b:b + PER_CALL], H[b:b + PER_CALL]) if grads else None
            f = F[b:b + PER_CALL] if features == "embeddings" else None
            select(f, g, fraction=FRACTION, band=0.0, strategy=strategy, random_state=0,
                   offsets=np.arange(b, min(b + PER_CALL, F.shape[0])) * BATCH)

    return run


def profile(model_kind, data, repeats):
    import numba
    import torch
    import torch.nn.functional as tF
    from torch.utils.data import DataLoader

    from graft_array.adapters.torch import GraftEpochSampler

    Xtr, ytr = (torch.as_tensor(a) for a in data[:2])
    classes = int(ytr.max()) + 1
    net = training.make_model(model_kind, tuple(Xtr.shape[1:]), classes, seed=0)
    dataset = training._IndexedTensors(Xtr, ytr)
    rows = {}
    for features in ("embeddings", "gradients"):
        sampler = GraftEpochSampler(dataset, net, fraction=FRACTION, batch_size=BATCH, seed=0, progress=False,
                                    collate_fn=training._as_batch, features=features, band=0.0)
        sampler.refresh()  # warm-up: Numba's kernels for these shapes, torch's buffers
        rows[features] = best(sampler.refresh, repeats)

    def load():
        loader = DataLoader(dataset, batch_size=BATCH * PER_FORWARD, shuffle=False, collate_fn=training._as_batch)
        for _ in loader:
            pass

    sampler = GraftEpochSampler(dataset, net, fraction=FRACTION, batch_size=BATCH, seed=0, progress=False,
                                collate_fn=training._as_batch, band=0.0)
    parts = captured(sampler, Xtr, ytr)
    t_load = best(load, repeats)
    t_forward = best(lambda: captured(sampler, Xtr, ytr), repeats)
    stages = {
        "random": select_calls(parts, features="embeddings", strategy="random", grads=False),
        "emb_lowrank": select_calls(parts, features="embeddings", grads=False),
        "emb_all": select_calls(parts, features="embeddings"),
        "grad_all": select_calls(parts, features="gradients"),
    }
    for run in stages.values():
        run()  # warm-up
    t = {k: best(run, repeats) for k, run in stages.items()}
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        t1 = {k: best(stages[k], repeats) for k in ("emb_all", "grad_all")}
    finally:
        numba.set_num_threads(old)

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def epoch():
        for a in range(0, len(Xtr), BATCH):
            loss = tF.cross_entropy(net(Xtr[a:a + BATCH]), ytr[a:a + BATCH])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t_epoch = best(epoch, max(1, repeats // 2))
    net.load_state_dict(state)  # nothing below uses it; keep the model as it was
    return dict(load=t_load, forward=t_forward, select=t, select_1thread=t1, passes=rows, epoch=t_epoch,
                threads=(numba.get_num_threads(), torch.get_num_threads(), numba.threading_layer()))


def table(kind, r):
    s = r["select"]
    lines = [f"| stage ({kind}) | time | share of the `graft` pass | share of the `graft-grad` pass | per training epoch |",
             "|---|---:|---:|---:|---:|"]
    pe, pg = r["passes"]["embeddings"], r["passes"]["gradients"]

    def row(name, t, emb=True, grad=True):
        a = f"{100 * t / pe:.1f}%" if emb else "-"
        b = f"{100 * t / pg:.1f}%" if grad else "-"
        lines.append(f"| {name} | {1000 * t:.0f} ms | {a} | {b} | {t / r['epoch']:.2f} |")

    row("loading (DataLoader, collate)", r["load"])
    row("forward + capture + residuals", r["forward"])
    row("select: validation, output (strategy='random')", s["random"])
    row("select: + low rank + MaxVol on the embeddings", s["emb_lowrank"] - s["random"], grad=False)
    row("select: + criterion + weights", s["emb_all"] - s["emb_lowrank"], grad=False)
    row("select on the embeddings, in all", s["emb_all"], grad=False)
    row("select on the gradients, in all", s["grad_all"], emb=False)
    row("select on the embeddings, Numba on 1 thread", r["select_1thread"]["emb_all"], grad=False)
    row("select on the gradients, Numba on 1 thread", r["select_1thread"]["grad_all"], emb=False)
    row("the whole pass, `graft` (sampler.refresh())", pe, grad=False)
    row("the whole pass, `graft-grad`", pg, emb=False)
    row("a training epoch on all the data", r["epoch"], emb=False, grad=False)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=("mlp", "cnn"), default=["mlp", "cnn"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="digits, 1 repeat: a smoke run")
    args = ap.parse_args(argv)
    import torch

    data = training.load_data("digits" if args.quick else "fashion-mnist")
    repeats = 1 if args.quick else args.repeats
    print(f"# graft_array {graft_array.__version__} selection-pass profile, {time.strftime('%Y-%m-%d')}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"Python {platform.python_version()}; torch {torch.__version__}")
    print(f"# data: {data[4]}; fraction {FRACTION}, selection batches of {BATCH}, {PER_CALL} per select call, "
          f"band 0; best of {repeats}")
    for kind in args.models:
        r = profile(kind, data, repeats)
        nt, tt, layer = r["threads"]
        print(f"\n# {kind}: Numba {nt} threads ({layer} layer), torch {tt} threads")
        print(table(kind, r))


if __name__ == "__main__":
    main()
