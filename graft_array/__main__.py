"""``python -m graft_array``: a small example on an embedded default (no download).

Builds a deterministic 20 000 x 32 matrix of sample coordinates (orthonormal
columns, as GRAFT's low-rank features are), selects 32 rows with each method and
prints the rows' log-volume and the time taken. The training demo comes later.
"""

import argparse
import time

import numpy as np

import graft_array as ga


def _log_volume(V, rows):
    S = V[rows].astype(np.float64)
    sign, ld = np.linalg.slogdet(S @ S.T)
    return 0.5 * ld if sign > 0 else float("-inf")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m graft_array", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="number of samples (default 20000)")
    parser.add_argument("--rank", type=int, default=32, help="columns of V = rows selected (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    V, _ = np.linalg.qr(rng.standard_normal((args.rows, args.rank)))
    print(f"graft_array {ga.__version__}: selecting {args.rank} of {args.rows} rows (backend {ga.which_backend(V)})")
    random_rows = rng.choice(args.rows, args.rank, replace=False)
    print(f"{'method':<22}{'log-volume':>12}{'seconds':>10}")
    print(f"{'random rows':<22}{_log_volume(V, random_rows):>12.2f}{'':>10}")
    for method, refine in [("deim", False), ("deim", True), ("volume", False), ("tournament", False)]:
        ga.maxvol(V[:200], min(args.rank, 200), method=method, refine=refine)  # compile once
        t0 = time.perf_counter()
        rows = ga.maxvol(V, args.rank, method=method, refine=refine)
        dt = time.perf_counter() - t0
        label = method + (" + refine" if refine else "")
        print(f"{label:<22}{_log_volume(V, rows):>12.2f}{dt:>10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
