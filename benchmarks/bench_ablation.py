"""Ablation of GraftEpochSampler's options: which of them make GRAFT better at a given fraction.

    python benchmarks/bench_ablation.py                      # Fashion-MNIST MLP, fractions 0.1 0.3, 3 seeds
    python benchmarks/bench_ablation.py --variants graft graft+cb random
    python benchmarks/bench_ablation.py --quick              # digits, 1 seed, 2 epochs: a smoke run

Every row trains the same seeded 784-256-10 MLP with bench_training.py's
configuration (``CONFIG["mlp"]``: 10 epochs, Adam lr 1e-3, batch 128, a
selection pass every 2 epochs, selection batches of 128, select's default
``budget="call"``) through :func:`graft_array.training.run_method`; a variant is
GRAFT with the ``GraftEpochSampler`` options it sets (``sampler_kwargs``):

* ``emb``: MaxVol on the embeddings (the paper's choice), every sample a
  candidate; ``grad``: on the last-layer gradients, every sample a candidate;
* ``+pool``: ``pool_fraction="auto"``: each pass forwards a random
  class-stratified candidate pool of twice the budget and keeps about half of
  it; ``grad+pool`` is the sampler's default;
* ``+cb``: ``class_balance=True`` (select's budget split per class);
* ``+excl``: ``exclude_learned=True`` (CREST's rule, window 5, threshold 0.1;
  the training loop records its losses);
* ``+strata``: ``strata=4`` (loss-quartile budgets);
* ``+warm``: ``warm_start_epochs=2`` (two full-data epochs first);
* ``+every``: a pass every epoch (``refresh_every=1``) instead of every 2;
  ``+trigger``: a check every epoch, a pass only when CREST's trigger fires
  (``refresh_every=1, refresh_tau=0.1``, a 2048-sample probe);
* ``random``: Random, for reference, and ``full``: all the data.

Columns: test accuracy (mean +- std over seeds), its difference to Random at the
same fraction, the median wall time (selection included, evaluation excluded)
and its ratio to full data, and the selection share (median over seeds of
selection time / wall time). Written to
``benchmarks/results/ablation_<dataset>_mlp.{md,json}`` (every run in the JSON).
Nothing here asserts anything.
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import graft_array
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(HERE))
    import graft_array
sys.path.insert(0, HERE)
from bench_training import CONFIG  # noqa: E402  (the training benchmark's MLP configuration)

from graft_array import training  # noqa: E402

STRATA, WARM, TAU = 4, 2, 0.1
#: name -> (method, sampler_kwargs); the order is the table's
VARIANTS = {
    "full": ("full", {}),
    "random": ("random", {}),
    "emb": ("graft", dict(features="embeddings", pool_fraction=None)),
    "emb+cb": ("graft", dict(features="embeddings", pool_fraction=None, class_balance=True)),
    "emb+strata": ("graft", dict(features="embeddings", pool_fraction=None, strata=STRATA)),
    "emb+cb+pool": ("graft", dict(features="embeddings", class_balance=True)),
    "grad": ("graft", dict(pool_fraction=None)),
    "grad+cb": ("graft", dict(pool_fraction=None, class_balance=True)),
    "grad+strata": ("graft", dict(pool_fraction=None, strata=STRATA)),
    "grad+excl": ("graft", dict(pool_fraction=None, exclude_learned=True)),
    "grad+warm": ("graft", dict(pool_fraction=None, warm_start_epochs=WARM)),
    "grad+pool (default)": ("graft", {}),
    "grad+pool+cb": ("graft", dict(class_balance=True)),
    "grad+pool+every": ("graft", dict(refresh_every=1)),
    "grad+pool+trigger": ("graft", dict(refresh_every=1, refresh_tau=TAU)),
}


def run(variants, data, *, fractions, seeds, cfg, progress=True):
    """Every variant x fraction x seed (``full`` once per seed): a list of (variant, RunResult)."""
    from tqdm.auto import tqdm

    base = dict(cfg, model="mlp")
    # untimed warm-up of every code path (Numba's compilation, torch's buffers) on a small slice
    for name in variants:
        method, skw = VARIANTS[name]
        training.warm_up(data, [method], fraction=min(fractions), sampler_kwargs=skw or None, **base)
    jobs = [(name, f, seed) for seed in seeds for name in variants
            for f in ([1.0] if VARIANTS[name][0] == "full" else fractions)]
    out = []
    with tqdm(jobs, desc="ablation runs", unit="run", disable=not progress) as bar:
        for name, f, seed in bar:
            bar.set_postfix_str(f"{name} f={f:g} seed={seed}")
            method, skw = VARIANTS[name]
            r = training.run_method(method, data, fraction=f, seed=seed, sampler_kwargs=skw or None, **base)
            r.extra["variant"] = name
            out.append((name, r))
    return out


def summarise(results, variants):
    """Per (variant, fraction): accuracy mean / std, against Random, median wall, against full, selection share."""
    groups = {}
    for name, r in results:
        groups.setdefault((name, r.fraction), []).append(r)
    full = groups.get(("full", 1.0))
    full_wall = float(np.median([r.wall_s for r in full])) if full else math.nan
    rows = []
    fracs = sorted({f for _, f in groups})
    for f in fracs:
        rnd = groups.get(("random", f))
        rnd_acc = float(np.mean([r.accuracy for r in rnd])) if rnd else math.nan
        for name in variants:
            rs = groups.get((name, f))
            if not rs:
                continue
            acc = np.array([r.accuracy for r in rs])
            wall = np.array([r.wall_s for r in rs])
            sel = np.array([r.selection_s for r in rs])
            rows.append(dict(
                variant=name, method=VARIANTS[name][0], sampler_kwargs=VARIANTS[name][1], fraction=f,
                seeds=len(rs), acc_mean=float(acc.mean()), acc_std=float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                acc_vs_random=float(acc.mean() - rnd_acc), wall_median=float(np.median(wall)),
                wall_vs_full=float(np.median(wall) / full_wall), selection_share=float(np.median(sel / wall)),
                passes=int(np.median([r.extra.get("passes", 0) for r in rs])),
            ))
    return rows


def format_table(rows, markdown=True):
    head = ["variant", "fraction", "test acc (mean +- std)", "vs random (points)", "wall (median)", "vs full",
            "selection share", "passes"]
    table = [[r["variant"], f"{r['fraction']:g}", f"{100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f}",
              "-" if math.isnan(r["acc_vs_random"]) or r["variant"] == "random" else f"{100 * r['acc_vs_random']:+.2f}",
              f"{r['wall_median']:.2f} s", f"{r['wall_vs_full']:.2f}x", f"{100 * r['selection_share']:.1f}%",
              str(r["passes"])] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(t) + " |" for t in table])
    wid = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    return "\n".join(["  ".join(h.ljust(w) for h, w in zip(head, wid))]
                     + ["  ".join(c.ljust(w) for c, w in zip(t, wid)) for t in table])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.3])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="override CONFIG['mlp']'s epochs")
    ap.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    ap.add_argument("--quick", action="store_true", help="digits, 1 seed, 2 epochs (a smoke run)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset, args.seeds, args.epochs = "digits", 1, 2
    variants = [v for v in VARIANTS if v in args.variants]  # the table's order
    os.makedirs(args.out, exist_ok=True)
    import torch

    cfg = dict(CONFIG["mlp"])
    if args.epochs:
        cfg["epochs"] = args.epochs
    data = training.load_data(args.dataset)
    header = [
        f"# graft_array {graft_array.__version__} GraftEpochSampler ablation, {time.strftime('%Y-%m-%d')}",
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()}; Python {platform.python_version()}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)",
        f"# data: {data[4]}",
        f"# mlp: {cfg['epochs']} epochs, Adam lr {cfg['lr']:g}, batch {cfg['batch_size']}, selection every "
        f"{cfg['refresh_every']} epochs, selection batches of 128, budget 'call'; fractions "
        f"{', '.join(f'{f:g}' for f in args.fractions)}; {args.seeds} seed(s); pool 2 x the budget, strata "
        f"{STRATA}, warm_start_epochs {WARM}, exclude_learned window 5 / threshold 0.1",
    ]
    print("\n".join(header), flush=True)
    t0 = time.perf_counter()
    results = run(variants, data, fractions=tuple(args.fractions), seeds=range(args.seeds), cfg=cfg,
                  progress=not args.no_progress)
    rows = summarise(results, variants)
    header.append(f"# {time.perf_counter() - t0:.0f} s in all; wall times are medians over the seeds")
    table = format_table(rows)
    text = "\n".join(header + ["", table]) + "\n"
    print("\n".join([header[-1], "", table]))
    stem = os.path.join(args.out, f"ablation_{args.dataset}_mlp")
    with open(stem + ".md", "w") as fh:
        fh.write(text)
    with open(stem + ".json", "w") as fh:
        json.dump(dict(config=dict(cfg, model="mlp", fractions=args.fractions, seeds=args.seeds, dataset=args.dataset,
                                   variants={v: dict(method=VARIANTS[v][0], sampler_kwargs=VARIANTS[v][1])
                                             for v in variants}),
                       summary=rows,
                       runs=[dict(training.results_as_dicts([r])[0], variant=name) for name, r in results]),
                  fh, indent=1)
    print(f"# wrote {stem}.md, .json")


if __name__ == "__main__":
    main()
