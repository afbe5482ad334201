"""End-to-end training benchmark: full data vs GRAFT vs Random, CRAIG and GradMatch, on Fashion-MNIST.

    python benchmarks/bench_training.py                       # MLP and CNN, fractions 0.1 0.3 0.5, 3 seeds
    python benchmarks/bench_training.py --models mlp          # the MLP only
    python benchmarks/bench_training.py --quick               # 1 seed, 2 epochs, digits: a smoke run

For each model, every method trains the same seeded model with the same optimiser
(Adam), learning rate, batch size and number of epochs (see graft_array.training for
what each method does; GRAFT's size band is closed so that every selector trains on
round(fraction * n) samples of each selection batch). Wall time includes the
selection passes, excludes evaluation. Results go to benchmarks/results/:
training_<dataset>_<model>.md (the table, the configuration and the targets),
.json (every run) and .png (accuracy against wall time).

Targets (issue 5): GRAFT at fraction 0.3 within 1.0 point of full-data test accuracy at
<= 0.45x its wall time (selection included); GRAFT at least as accurate as Random, CRAIG
and GradMatch at equal budget (mean over seeds). Nothing here asserts anything: the
verdicts are printed and written next to the numbers.
"""

import argparse
import json
import os
import platform
import sys
import time

try:
    import graft_array
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import graft_array
from graft_array import training

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = {
    "mlp": dict(epochs=10, batch_size=128, lr=1e-3, refresh_every=2),
    "cnn": dict(epochs=5, batch_size=128, lr=1e-3, refresh_every=2),
}


def verdicts(rows):
    """The issue's targets, checked on the summary rows of each GRAFT variant (lines of text)."""
    by = {(r["method"], r["fraction"]): r for r in rows}
    out = []
    for name in ("graft", "graft-grad"):
        g = by.get((name, 0.3))
        if g is not None and ("full", 1.0) in by:
            ok = g["acc_vs_full"] >= -0.01 and g["wall_vs_full"] <= 0.45
            out.append(f"{name} at 0.3: {100 * g['acc_vs_full']:+.2f} points vs full (target >= -1.00), "
                       f"{g['wall_vs_full']:.2f}x its wall time (target <= 0.45x): {'met' if ok else 'NOT met'}")
    for name in ("graft", "graft-grad"):
        for f in sorted({r["fraction"] for r in rows if r["method"] == name}):
            g = by[(name, f)]
            for peer in ("random", "craig", "gradmatch"):
                p = by.get((peer, f))
                if p is None:
                    continue
                ok = g["acc_mean"] >= p["acc_mean"]
                out.append(f"fraction {f:g}: {name} {100 * g['acc_mean']:.2f}% vs {peer} {100 * p['acc_mean']:.2f}%: "
                           f"{'met' if ok else 'NOT met'}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=sorted(CONFIG), default=["mlp", "cnn"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="override the per-model epochs")
    ap.add_argument("--refresh-every", type=int, default=None, help="override the epochs between selection passes")
    ap.add_argument("--methods", nargs="+", choices=training.METHODS, default=list(training.METHODS))
    ap.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    ap.add_argument("--quick", action="store_true", help="digits, 1 seed, 2 epochs (a smoke run)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-energy", action="store_true")
    ap.add_argument("--country-iso-code", default="USA")
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset, args.seeds, args.epochs = "digits", 1, 2
    os.makedirs(args.out, exist_ok=True)
    import torch

    data = training.load_data(args.dataset)
    header = [
        f"# graft_array {graft_array.__version__} training benchmark, {time.strftime('%Y-%m-%d')}",
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()}; Python {platform.python_version()}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)",
        f"# data: {data[4]}",
    ]
    print("\n".join(header))
    for model in args.models:
        cfg = dict(CONFIG[model])
        if args.epochs:
            cfg["epochs"] = args.epochs
        if args.refresh_every:
            cfg["refresh_every"] = args.refresh_every
        tracker = training.energy_tracker(not args.no_energy, args.country_iso_code)
        t0 = time.perf_counter()
        try:
            results = training.run_grid(data, methods=args.methods, fractions=tuple(args.fractions),
                                        seeds=range(args.seeds), tracker=tracker, model=model, **cfg)
        finally:
            tracker.stop()
        rows = training.summarise(results)
        conf = (f"# {model}: {cfg['epochs']} epochs, Adam lr {cfg['lr']:g}, batch {cfg['batch_size']}, selection "
                f"every {cfg['refresh_every']} epochs (epoch modes), selection batches of 128, fractions "
                f"{', '.join(f'{f:g}' for f in args.fractions)}, {args.seeds} seed(s); "
                f"{time.perf_counter() - t0:.0f} s in all")
        table = training.format_table(rows, markdown=True, energy=tracker.available)
        notes = verdicts(rows)
        energy = ("# energy and CO2: codecarbon offline tracker estimates (country "
                  f"{args.country_iso_code}), not measurements" if tracker.available else "# energy: not tracked")
        text = "\n".join(header + [conf, energy, "", table, ""] + [f"- {v}" for v in notes]) + "\n"
        print("\n" + "\n".join([conf, energy, "", table, ""] + [f"- {v}" for v in notes]))
        stem = os.path.join(args.out, f"training_{args.dataset}_{model}")
        with open(stem + ".md", "w") as fh:
            fh.write(text)
        with open(stem + ".json", "w") as fh:
            json.dump(dict(config=dict(cfg, model=model, fractions=args.fractions, seeds=args.seeds,
                                       dataset=args.dataset),
                           summary=rows, runs=training.results_as_dicts(results)), fh, indent=1)
        training.plot_results(rows, stem + ".png", title=f"{data[4].split(' (')[0]}, {model}: accuracy vs wall time")
        print(f"# wrote {stem}.md, .json, .png")


if __name__ == "__main__":
    main()
