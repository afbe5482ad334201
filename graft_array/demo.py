"""``graft-array demo``: how much training time GRAFT saves, for how much accuracy, on your machine.

Trains a small torch model on scikit-learn's digits (bundled, no download; or
Fashion-MNIST with ``--dataset fashion-mnist`` when its IDX files are installed)
with full data and with GRAFT (epoch mode and the paper's per-batch mode),
Random, CRAIG and GradMatch at the same budget, over several seeds; prints a table
(test accuracy mean +- std, wall time with selection, the selection's share of it,
energy and CO2 estimated by codecarbon's offline tracker when installed) and writes
a plot of accuracy against wall time. See :mod:`graft_array.training` for what
each method does.
"""

import argparse
import json
import os
import sys
import time

from .datasets import DataNotFoundError
from .training import FAMILY_METHODS, METHODS

DEFAULTS = {
    "digits": dict(epochs=20, refresh_every=2, batch_size=64, lr=2e-3, fractions=(0.1, 0.3)),
    "fashion-mnist": dict(epochs=10, refresh_every=2, batch_size=128, lr=1e-3, fractions=(0.1, 0.3, 0.5)),
}


def build_parser(prog="graft-array demo"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def add_arguments(p):
    p.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits",
                   help="digits (bundled with scikit-learn, default) or fashion-mnist (IDX files needed)")
    p.add_argument("--data-dir", default=None,
                   help="directory of the Fashion-MNIST IDX files (default: the Debian package's)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD",
                   default=[m for m in METHODS if m not in FAMILY_METHODS],
                   help=f"any of {', '.join(METHODS)} (default: all but {', '.join(FAMILY_METHODS)})")
    p.add_argument("--fractions", nargs="+", type=float, default=None, help="subset fractions (default per dataset)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for every method (default per dataset)")
    p.add_argument("--refresh-every", type=int, default=None, help="epochs between selection passes (epoch mode)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--plot", default="graft_demo.png", help="where the PNG goes (default ./graft_demo.png)")
    p.add_argument("--json", default=None, help="also write every run's numbers to this JSON file")
    p.add_argument("--no-energy", action="store_true", help="do not run codecarbon's tracker")
    p.add_argument("--country-iso-code", default="USA", help="grid carbon intensity for the CO2 estimate")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args, out=None, prog="graft-array demo"):
    """Run the demo for parsed ``args``; returns the summary rows. ``prog`` starts its error messages."""
    out = out or sys.stdout
    try:
        import torch
    except ImportError:
        raise SystemExit(f"{prog} needs PyTorch: pip install 'graft-array[demo]'") from None
    from . import training

    d = DEFAULTS[args.dataset]
    fractions = tuple(args.fractions) if args.fractions else d["fractions"]
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise SystemExit(f"{prog}: --fractions must lie in (0, 1]; got {f}.")
    if args.seeds < 1:
        raise SystemExit(f"{prog}: --seeds must be >= 1; got {args.seeds}.")
    kw = dict(
        model=args.model,
        epochs=args.epochs or d["epochs"],
        refresh_every=args.refresh_every or d["refresh_every"],
        batch_size=args.batch_size or d["batch_size"],
        lr=args.lr or d["lr"],
    )
    t0 = time.perf_counter()
    try:
        data = training.load_data(args.dataset, data_dir=args.data_dir)
    except DataNotFoundError as e:
        raise SystemExit(
            f"{prog}: the Fashion-MNIST file {e.missing} (or {e.missing}.gz) is not in {e.directory!r}. Install "
            "the Debian package 'dataset-fashion-mnist', or pass --data-dir DIR with the four IDX files."
        ) from None
    tracker = training.energy_tracker(not args.no_energy, args.country_iso_code)
    print(f"graft-array demo: {data[4]}; {args.model}, {kw['epochs']} epochs, Adam lr {kw['lr']:g}, batch "
          f"{kw['batch_size']}, selection every {kw['refresh_every']} epochs; fractions "
          f"{', '.join(f'{f:g}' for f in fractions)}; {args.seeds} seed(s); torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)", file=out)
    try:
        results = training.run_grid(data, methods=args.methods, fractions=fractions, seeds=range(args.seeds),
                                    progress=not args.quiet, tracker=tracker, **kw)
    finally:
        tracker.stop()
    rows = training.summarise(results)
    print(training.format_table(rows, markdown=args.markdown, energy=tracker.available), file=out)
    if tracker.available:
        print(f"energy and CO2: codecarbon offline tracker estimates (country {args.country_iso_code}), "
              "not measurements", file=out)
    else:
        print("energy and CO2: not tracked (install codecarbon, or drop --no-energy)", file=out)
    if args.plot:
        training.plot_results(rows, args.plot, title=f"{data[4].split(' (')[0]}, {args.model}: accuracy vs wall time")
        print(f"plot: {os.path.abspath(args.plot)}", file=out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(config=dict(vars(args), **kw, fractions=list(fractions)), summary=rows,
                           runs=training.results_as_dicts(results)), fh, indent=1, default=str)
    print(f"done in {time.perf_counter() - t0:.1f} s", file=out)
    return rows


def main(argv=None, prog="graft-array demo"):
    args = build_parser(prog).parse_args(argv)
    run(args, prog=prog)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
