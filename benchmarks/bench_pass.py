"""Where one selection pass of ``GraftEpochSampler`` spends its time, against a training epoch.

    python benchmarks/bench_pass.py                  # Fashion-MNIST, the MLP and the CNN of bench_training
    python benchmarks/bench_pass.py --models mlp     # one of them
    python benchmarks/bench_pass.py --quick          # digits, a smoke run
    python benchmarks/bench_pass.py --no-profile     # the levers only

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
  embeddings (``graft``) and once on the gradients (``graft-grad``), every
  sample a candidate unless a row names its pool (these names are this
  script's: the training benchmark's ``graft`` is the sampler's defaults,
  gradients with a pool of twice the budget);
* the whole pass (``sampler.refresh()``), and a training epoch on the full
  data (forward, backward, Adam step) for scale;
* thread contention: the select calls again with Numba held to one thread.

The sampler is built as ``graft_array.training`` builds it (its default
forward batches; ``channels_last=True`` for the CNN).

Then the levers of issue 11 (on by default, ``--no-levers`` to skip), each timed in
rounds that interleave the variants (best of ``--repeats`` rounds), so that a
load change on the machine hits every variant alike:

* the pass's forward + capture: ``torch.no_grad`` against
  ``torch.inference_mode``, forward batches of 128 to 2048 rows, and for the
  CNN the convolution weights in channels-last layout (``channels_last=True``);
* ``select`` inside the pass (timed by a wrapper during ``sampler.refresh()``)
  against the same calls alone: what torch's and Numba's thread pools cost
  each other when the forward and ``select`` alternate;
* the whole pass with the sampler's defaults for ``pool_fraction`` None, 0.75,
  0.5, 0.4 and 0.3, on the embeddings and on the gradients, per training epoch,
  and the selection share it gives in ``bench_training.py``'s configuration
  (``passes * P / (passes * P + epochs * fraction * E)``: P the pass, E a
  training epoch on all the data; 5 passes in 10 epochs for the MLP, 3 in 5
  for the CNN).

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
PER_FORWARD = 8  # selection batches per forward before issue 11 (the levers' "before" row)
SCHEDULE = {"mlp": (10, 2), "cnn": (5, 2)}  # bench_training's epochs and refresh_every per model
POOLS = (None, 0.75, 0.5, 0.4, 0.3)



def _training_epoch(net, opt, X, y):
    """One training epoch on all of X (batches of BATCH, cross-entropy, ``opt``), as a function to time."""
    import torch.nn.functional as tF

    def epoch():
        for a in range(0, len(X), BATCH):
            loss = tF.cross_entropy(net(X[a:a + BATCH]), y[a:a + BATCH])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch

def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def captured(sampler, X, y):
    """The pass's captured arrays, per forward batch: (features, residuals, embeddings) as torch tensors."""
    from graft_array.adapters.torch import _channels_last

    sk = sampler._sketch
    out = []
    step = sampler._forward_rows()
    with _channels_last(sk._inner, sampler.channels_last):
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
    from torch.utils.data import DataLoader

    from graft_array.adapters.torch import GraftEpochSampler

    Xtr, ytr = (torch.as_tensor(a) for a in data[:2])
    classes = int(ytr.max()) + 1
    net = training.make_model(model_kind, tuple(Xtr.shape[1:]), classes, seed=0)
    dataset = training._IndexedTensors(Xtr, ytr)
    # the sampler as graft_array.training builds it: its default forward batches, channels-last for conv nets
    kw = dict(fraction=FRACTION, batch_size=BATCH, seed=0, progress=False, collate_fn=training._as_batch, band=0.0,
              channels_last=any(isinstance(m, torch.nn.Conv2d) for m in net.modules()))
    rows = {}
    for features in ("embeddings", "gradients"):
        sampler = GraftEpochSampler(dataset, net, features=features, pool_fraction=None, **kw)
        sampler.refresh()  # warm-up: Numba's kernels for these shapes, torch's buffers
        rows[features] = best(sampler.refresh, repeats)

    sampler = GraftEpochSampler(dataset, net, features="embeddings", pool_fraction=None, **kw)

    def load():
        loader = DataLoader(dataset, batch_size=sampler._forward_rows(), shuffle=False, collate_fn=training._as_batch)
        for _ in loader:
            pass

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

    epoch = _training_epoch(net, opt, Xtr, ytr)

    t_epoch = best(epoch, max(1, repeats // 2))
    net.load_state_dict(state)  # nothing below uses it; keep the model as it was
    return dict(load=t_load, forward=t_forward, select=t, select_1thread=t1, passes=rows, epoch=t_epoch,
                threads=(numba.get_num_threads(), torch.get_num_threads(), numba.threading_layer()))


def rounds(variants, repeats):
    """Best time of each variant over ``repeats`` rounds that run every variant once, in turn."""
    for fn in variants.values():
        fn()  # warm-up
    best_t = {k: float("inf") for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            best_t[k] = min(best_t[k], time.perf_counter() - t0)
    return best_t


def share(kind, p, e, fraction=FRACTION):
    """Selection share of a GRAFT run in bench_training's schedule, from a pass p and a full-data epoch e."""
    epochs, every = SCHEDULE[kind]
    passes = -(-epochs // every)
    return passes * p / (passes * p + epochs * fraction * e)


def levers(model_kind, data, repeats):
    import torch

    import graft_array.adapters.torch as gt
    from graft_array.adapters.torch import GraftEpochSampler, _channels_last

    Xtr, ytr = (torch.as_tensor(a) for a in data[:2])
    classes = int(ytr.max()) + 1
    net = training.make_model(model_kind, tuple(Xtr.shape[1:]), classes, seed=0)
    dataset = training._IndexedTensors(Xtr, ytr)
    kw = dict(fraction=FRACTION, batch_size=BATCH, seed=0, progress=False, collate_fn=training._as_batch, band=0.0)
    emb = GraftEpochSampler(dataset, net, features="embeddings", pool_fraction=None, **kw)
    sk = emb._sketch
    conv = any(isinstance(m, torch.nn.Conv2d) for m in net.modules())

    def forward(rows, inference, cl=False):
        def run():
            with _channels_last(net, cl):
                for a in range(0, len(Xtr), rows):
                    sk.sketch(Xtr[a:a + rows], ytr[a:a + rows], inference=inference)
        return run

    fwd = {}
    for rows in (128, 256, 512, 1024) + (() if conv else (2048,)):
        fwd[(rows, "no_grad", False)] = forward(rows, False)
        fwd[(rows, "inference_mode", False)] = forward(rows, True)
        if conv:
            fwd[(rows, "no_grad", True)] = forward(rows, False, True)
    t_fwd = rounds(fwd, repeats)

    # select inside the pass (a timing wrapper around the adapter's select) against the same calls alone
    inside = []
    orig = gt.select

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = orig(*a, **k)
        inside.append(time.perf_counter() - t0)
        return out

    contention = {}
    for features in ("embeddings", "gradients"):
        sampler = GraftEpochSampler(dataset, net, features=features, pool_fraction=None, **kw)
        sampler.refresh()
        best_in = float("inf")
        gt.select = timed
        try:
            for _ in range(repeats):
                inside.clear()
                sampler.refresh()
                best_in = min(best_in, sum(inside))
        finally:
            gt.select = orig
        alone = select_calls(captured(emb, Xtr, ytr), features=features)  # whole batches only
        alone()
        contention[features] = (best_in, best(alone, repeats))

    # the whole pass per pool fraction, and a training epoch, interleaved
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ostate = opt.state_dict()

    epoch = _training_epoch(net, opt, Xtr, ytr)

    passes = {"epoch": epoch}
    for features in ("embeddings", "gradients"):
        # the former defaults: forwards of 1024 rows under torch.no_grad
        sampler = GraftEpochSampler(dataset, net, features=features, forward_batch_size=BATCH * PER_FORWARD,
                                    pool_fraction=None, **kw)
        passes[(features, "before")] = sampler.refresh
        kw["channels_last"] = conv  # what graft_array.training passes for conv nets
        for pool in POOLS:
            sampler = GraftEpochSampler(dataset, net, features=features, pool_fraction=pool, **kw)
            passes[(features, pool)] = sampler.refresh
        # the in-pool rank select would take by itself (round(fraction / pool * n)) instead of the sampler's
        grown = round(FRACTION / 0.5 * BATCH)
        sampler = GraftEpochSampler(dataset, net, features=features, pool_fraction=0.5, rank=grown, **kw)
        passes[(features, "0.5, rank grown")] = sampler.refresh
        del kw["channels_last"]
    t_pass = rounds(passes, max(1, repeats))
    net.load_state_dict(state)
    opt.load_state_dict(ostate)
    return dict(forward=t_fwd, contention=contention, passes=t_pass, conv=conv)


def lever_tables(kind, r):
    out = []
    f = r["forward"]
    base = f[(1024, "no_grad", False)]
    out += [f"| forward + capture ({kind}), rows per forward | torch.no_grad | inference_mode | "
            + ("torch.no_grad + channels-last | " if r["conv"] else "") + "best / no_grad at 1024 |",
            "|---:|---:|---:|" + ("---:|" if r["conv"] else "") + "---:|"]
    for rows in sorted({k[0] for k in f}):
        cells = [f[(rows, "no_grad", False)], f[(rows, "inference_mode", False)]]
        if r["conv"]:
            cells.append(f[(rows, "no_grad", True)])
        out.append(f"| {rows} | " + " | ".join(f"{1000 * t:.0f} ms" for t in cells) + f" | {min(cells) / base:.2f} |")
    out += ["", f"| select ({kind}) | inside the pass | the same calls alone | inside / alone |", "|---|---:|---:|---:|"]
    for features, (a, b) in r["contention"].items():
        out.append(f"| on the {features} | {1000 * a:.0f} ms | {1000 * b:.0f} ms | {a / b:.2f} |")
    p = r["passes"]
    e = p["epoch"]
    epochs, every = SCHEDULE[kind]
    out += ["", f"| pass ({kind}), pool_fraction | `graft` pass | per epoch | selection share | `graft-grad` pass "
            f"| per epoch | selection share |", "|---|---:|---:|---:|---:|---:|---:|"]
    for pool in ("before",) + POOLS + ("0.5, rank grown",):
        pe, pg = p[("embeddings", pool)], p[("gradients", pool)]
        name = "None (all), before (1024-row forwards)" if pool == "before" else "None (all)" if pool is None else (f"{pool} (rank {round(FRACTION * BATCH)})" if isinstance(pool, float)
                                                  else f"0.5 (rank {round(FRACTION / 0.5 * BATCH)}, select's own)")
        out.append(f"| {name} | {1000 * pe:.0f} ms | {pe / e:.3f} | "
                   f"{100 * share(kind, pe, e):.1f}% | {1000 * pg:.0f} ms | {pg / e:.3f} | {100 * share(kind, pg, e):.1f}% |")
    cl = ", channels-last convolutions" if r["conv"] else ""
    rows = (2 if r["conv"] else 8) * BATCH
    out.append(f"\n(the sampler's defaults: {rows}-row forwards under torch.no_grad{cl}; training epoch on all "
               f"the data: {1000 * e:.0f} ms; selection share for bench_training's {kind}: {-(-epochs // every)} "
               f"passes in {epochs} epochs at fraction {FRACTION})")
    return "\n".join(out)


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
    ap.add_argument("--no-profile", action="store_true", help="skip the stage breakdown")
    ap.add_argument("--no-levers", action="store_true", help="skip the levers")
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
        if not args.no_profile:
            r = profile(kind, data, repeats)
            nt, tt, layer = r["threads"]
            print(f"\n# {kind}: Numba {nt} threads ({layer} layer), torch {tt} threads", flush=True)
            print(table(kind, r), flush=True)
        if not args.no_levers:
            print(f"\n# {kind}: levers (rounds interleaving the variants, best of {repeats})", flush=True)
            print(lever_tables(kind, levers(kind, data, repeats)), flush=True)


if __name__ == "__main__":
    main()
