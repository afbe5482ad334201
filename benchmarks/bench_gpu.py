"""GPU benchmark of the CUDA kernels (issue 12): throughput, against peers measured in the same run.

    python benchmarks/bench_gpu.py                 # on a machine with a CUDA device and the [gpu] extra
    python benchmarks/bench_gpu.py --quick         # smaller problems
    python benchmarks/bench_gpu.py --out DIR       # also write gpu.md there
    python benchmarks/bench_gpu.py --tables deim   # only some of the tables (deim, warp, select, tall)

Tables (each time the median of ``--repeats`` runs, CUDA events around the work):

* the device's copy bandwidth (a device-to-device copy of 1 GiB, read + write);
* batched DEIM on B batches of 128 x 32 (B = 1e4, 1e5, 1e6; float32 and
  float64): batches/s, GB/s of V read, the share of the copy bandwidth, and
  the ratio to ``torch.linalg.lu_factor_ex`` on the same stack (batched getrf,
  also partial pivoting; the ``_ex`` form skips the error check and its host
  synchronisation, as our kernel has none) and to a CuPy loop of
  ``cupyx.scipy.linalg.lu_factor(..., check_finite=False)`` over batches (on the
  first 100 batches). Both peers are timed on m and m / 2 batches and
  extrapolated to B along the line through the two (a fixed cost counted once:
  :func:`scaled_time`). Our side is the bare kernel (it flags non-finite
  batches in its own pass, as the public ``maxvol`` uses it), so the peers get no
  input checks either;
* the float32 128 x 32 warp kernel as shipped and with 3 or 4 blocks of 4 warps per SM
  forced by ``__launch_bounds__`` (fewer registers, some spilled: :func:`warp_variant`), to
  see whether more warps in flight pay for the spills (the shipped one runs 8 warps per SM);
* ``select`` end to end on the GPU against the Numba path on this machine's
  CPU cores (the same problem, 64 batches of 128 rows per call), then where the
  GPU call spends its time, stage by stage (:func:`select_stages`: wall and
  device time of each);

* tall DEIM (``deim_tall.cu``: a scan and a commit per step) and the tournament (the CPU path's default
  tiles) on one 1e7 x 64 float32 matrix (1e6 with ``--quick``) against
  ``cupyx.scipy.linalg.lu_factor`` (getrf, partial pivoting, ``check_finite=False``; its copy to
  Fortran order counts, as the data come in C order) on it.

Without a device the script says so and exits 0. Nothing here asserts anything.
"""

import argparse
import os
import platform
import sys
import time
import traceback

import numpy as np

try:
    import graft_array
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import graft_array


def _time_gpu(fn, repeats):
    import cupy

    fn()  # compile / warm
    cupy.cuda.Device().synchronize()
    out = []
    for _ in range(repeats):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(cupy.cuda.get_elapsed_time(a, b) / 1000.0)
    return float(np.median(out))


def bandwidth(repeats):
    import cupy

    x = cupy.ones(2**28, dtype=cupy.float32)  # 1 GiB
    y = cupy.empty_like(x)
    t = _time_gpu(lambda: y.__setitem__(slice(None), x), repeats)
    return 2 * x.nbytes / t / 1e9


def scaled_time(t_m, t_half, m, B):
    """Seconds for B batches from the times of m and m // 2 (m < B): the line through both points, so a fixed
    cost (launches, a synchronisation) is counted once, not B / m times; the plain ratio t_m B / m where the
    two points give no line with a positive slope and a fixed cost >= 0 (noise). Never above the plain ratio."""
    half = m // 2
    slope = (t_m - t_half) / (m - half)
    fixed = t_m - slope * m
    if slope <= 0 or fixed < 0:
        return t_m * B / m
    return fixed + slope * B


def _time_subset(fn, B, m, repeats):
    """Seconds for all B batches, timed on the first m (<= B) and m // 2 and extrapolated by
    :func:`scaled_time`: the peers that loop or launch per matrix would take minutes on a million batches;
    m is in the table's header."""
    m = min(B, m)
    t_m = _time_gpu(lambda: fn(m), repeats)
    if m == B or m < 2:
        return t_m * B / m
    return scaled_time(t_m, _time_gpu(lambda: fn(m // 2), repeats), m, B)


def deim_rows(sizes, repeats, bw, peer_batches):
    import cupy
    import torch
    from cupyx.scipy.linalg import lu_factor

    from graft_array._cuda import deim as cdeim

    rows = []
    for dt in (np.float32, np.float64):
        for B in sizes:
            V = cupy.random.default_rng(0).standard_normal((B, 128, 32), dtype=dt)
            t = _time_gpu(lambda: cdeim.deim_batched(V, 32), repeats)  # the warp kernel where it applies
            tb = _time_gpu(lambda: cdeim.deim_batched(V, 32, warp=False), repeats)  # a thread per row
            tv = torch.from_dlpack(V)
            tt = _time_subset(lambda m: torch.linalg.lu_factor_ex(tv[:m]), B, peer_batches, repeats)  # no info check
            tl = _time_subset(lambda m: [lu_factor(V[b], check_finite=False) for b in range(m)], B, 100,
                              max(1, repeats // 2))
            gbs = V.nbytes / t / 1e9
            kernel = "warp" if cdeim.warp_instance(V.dtype, 128, 32, 32) else "block"
            rows.append((np.dtype(dt).name, B, kernel, B / t, gbs, gbs / bw, tb / t, tt / t, tl / t))
            V = tv = None  # free the stack before the next size
            cupy.get_default_memory_pool().free_all_blocks()
    return rows


_WARP_BOUNDS = "__launch_bounds__(32 * GRAFT_WARPS)"


def warp_variant(inst, min_blocks):
    """``(source, registers, spill bytes (stores, loads))`` of the warp kernel's instance ``inst`` compiled with
    ``__launch_bounds__(128, min_blocks)`` (None: as it ships): at least ``min_blocks`` blocks of 4 warps per SM,
    the registers capped to fit them (the shipped float32 128 x 32 instance takes 228: 2 blocks, 8 warps)."""
    from graft_array._cuda import build

    src = build.full_source("deim_warp.cu", inst)
    if min_blocks is not None:
        assert src.count(_WARP_BOUNDS) == 1, "deim_warp.cu's launch bounds changed: update bench_gpu.warp_variant"
        src = src.replace(_WARP_BOUNDS, f"__launch_bounds__(32 * GRAFT_WARPS, {min_blocks})")
    res = build.resources(build.compile_nvrtc("deim_warp.cu", code=src)[1])[inst]
    return src, res["registers"], (res["spill_stores"], res["spill_loads"])


def warp_variant_rows(B, repeats, bw):
    """The float32 128 x 32 warp kernel as shipped and with 3 and 4 blocks per SM forced (12 and 16 warps, fewer
    registers, some spilled): batches/s, share of the copy bandwidth, and whether the pivots are the shipped
    kernel's, on B batches."""
    import cupy

    from graft_array._cuda import build
    from graft_array._cuda import deim as cdeim

    V = cupy.random.default_rng(0).standard_normal((B, 128, 32), dtype=cupy.float32)
    inst = cdeim.warp_instance(V.dtype, 128, 32, 32)
    want = cdeim.deim_batched(V, 32, warp=True)[0]
    eps = float(np.finfo(np.float32).eps)
    rows = []
    for min_blocks in (None, 3, 4):
        src, regs, spills = warp_variant(inst, min_blocks)
        fn = cupy.RawModule(code=src, options=build.module_options()).get_function(inst)
        piv, rank, bad = (cupy.empty((B, 32), cupy.int64), cupy.empty(B, cupy.int64), cupy.empty(B, cupy.int32))

        def run():
            fn((-(-B // cdeim.WARPS),), (32 * cdeim.WARPS,), (V, np.int32(B), np.int32(128), np.int32(32),
                                                              np.int32(32), np.float64(eps), piv, rank, bad))

        t = _time_gpu(run, repeats)
        rows.append((min_blocks, regs, spills, B / t, V.nbytes / t / 1e9 / bw, bool((piv == want).all())))
    return rows


def tall_rows(n, r, repeats):
    """Tall DEIM (deim_tall.cu) and the tournament (default tiles) against cupyx's lu_factor."""
    import cupy
    from cupyx.scipy.linalg import lu_factor

    from graft_array._common import default_tile_rows
    from graft_array._cuda import deim as cdeim
    from graft_array._cuda import tournament as ctour

    V = cupy.random.default_rng(0).standard_normal((1, n, r), dtype=cupy.float32)
    tiles = default_tile_rows(n, r)
    t_tall = _time_gpu(lambda: cdeim.deim_tall(V, r), repeats)
    t_tour = _time_gpu(lambda: ctour.tournament(V, r, tiles), repeats)
    t_lu = _time_gpu(lambda: lu_factor(V[0], check_finite=False), repeats)
    return [("tall DEIM (deim_tall.cu)", t_tall, t_lu / t_tall),
            (f"tournament (tiles of {tiles})", t_tour, t_lu / t_tour), ("cupyx.scipy.linalg.lu_factor", t_lu, 1.0)]


def select_problem():
    """The select tables' problem: 64 batches of 128 x 64 float32 features and 10-column gradients (NumPy)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 128, 64)).astype(np.float32), rng.standard_normal((64, 128, 10)).astype(np.float32)


def select_rows(repeats):
    import cupy

    F, G = select_problem()
    Fc, Gc = cupy.asarray(F), cupy.asarray(G)
    graft_array.select(F, G, fraction=0.25, random_state=0)
    cpu = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        graft_array.select(F, G, fraction=0.25, random_state=0)
        cpu.append(time.perf_counter() - t0)
    gpu = _time_gpu(lambda: graft_array.select(Fc, Gc, fraction=0.25, random_state=0), repeats)
    return float(np.median(cpu)), gpu


#: select's stages on a device (strategies/graft.py's run_generic): (label, module, attribute) of each call timed
STAGES = (
    ("max |F| and |G| per batch", "graft_array._agnostic.criterion", "batch_abs_max"),
    ("low rank (Grams, Cholesky QR, eigh)", "graft_array._agnostic.lowrank", "lowrank"),
    ("maxvol (DEIM kernel)", "graft_array.strategies.graft", "kernel"),
    ("criterion Grams", "graft_array._agnostic.criterion", "gram_plain"),
    ("criterion Grams", "graft_array._agnostic.criterion", "gram_last_layer"),
    ("rho(m) curves", "graft_array._cuda.criterion", "rho_curve_on"),
    ("weights (NNLS kernel)", "graft_array._cuda.nnls", "nnls_weights_like"),
)


def select_stages(F, G, repeats, backend="cuda"):
    """Where one ``select`` call on device arrays spends its time: each stage's wall time (host, including its
    launches and any host synchronisation) and device time (CUDA events), the median over ``repeats`` calls.

    Each stage is timed by wrapping its entry (``STAGES``); the device is synchronised before each stage, so the
    wall times add up to more than an unwrapped call. Returns ``[(label, wall s, device s)]``, the last row being
    the whole call (its device time is the events around it)."""
    import importlib

    import cupy

    times = {}

    def clocked(fn, *a, **k):
        """``(fn's result, wall s, device s)`` of one call, the device synchronised first."""
        cupy.cuda.get_current_stream().synchronize()
        e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
        t0 = time.perf_counter()
        e0.record()
        out = fn(*a, **k)
        e1.record()
        e1.synchronize()
        return out, time.perf_counter() - t0, cupy.cuda.get_elapsed_time(e0, e1) / 1e3

    def wrap(label, fn, maxvol=False):
        def timed(*a, **k):
            if maxvol:  # strategies.graft.kernel("maxvol", name) returns the entry that runs it: time that
                return wrap(label, fn(*a, **k))
            out, wall, dev = clocked(fn, *a, **k)
            times.setdefault(label, []).append((wall, dev))
            return out
        return timed

    saved = []
    try:
        for label, mod, attr in STAGES:
            m = importlib.import_module(mod)
            saved.append((m, attr, getattr(m, attr)))
            setattr(m, attr, wrap(label, getattr(m, attr), maxvol=attr == "kernel"))

        def call():
            graft_array.select(F, G, fraction=0.25, random_state=0, backend=backend)

        call()  # warm (compiles)
        times.clear()
        rows = []
        for _ in range(repeats):
            rows.append(clocked(call)[1:])
    finally:
        for m, attr, fn in reversed(saved):
            setattr(m, attr, fn)
    out = []
    for label in dict.fromkeys(lb for lb, _, _ in STAGES):
        if label in times:  # per call: the stage's calls summed, then the median over the calls
            per = np.asarray(times[label]).reshape(repeats, -1, 2).sum(axis=1)
            out.append((label, float(np.median(per[:, 0])), float(np.median(per[:, 1]))))
    whole = np.asarray(rows)
    out.append(("the whole call (stages wrapped)", float(np.median(whole[:, 0])), float(np.median(whole[:, 1]))))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tables", default="deim,warp,select,tall", help="which tables, comma-separated "
                    "(default: all)")
    ap.add_argument("--peer-batches", type=int, default=10_000, help="torch.linalg.lu_factor_ex is timed on at most "
                    "this many batches (and half as many) and extrapolated (default 10000)")
    args = ap.parse_args(argv)
    try:
        import cupy

        ndev = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - no cupy, no driver
        print(f"# no CUDA device ({type(e).__name__}: {e}); nothing to measure")
        return 0
    if ndev == 0:
        print("# no CUDA device; nothing to measure")
        return 0
    props = cupy.cuda.runtime.getDeviceProperties(0)
    lines = []

    def emit(*new):
        """Print as measured, and keep gpu.md current: a run cut short still leaves its tables."""
        lines.extend(new)
        print("\n".join(new), flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "gpu.md"), "w") as fh:
                fh.write("\n".join(lines) + "\n")

    emit(f"# graft_array {graft_array.__version__} GPU benchmark, {time.strftime('%Y-%m-%d')}",
         f"# device: {props['name'].decode()}, host: {platform.processor() or platform.machine()}, "
         f"{os.cpu_count()} logical CPUs")
    bw = bandwidth(args.repeats)
    emit(f"# device copy bandwidth: {bw:.0f} GB/s (read + write)")
    failed = []

    def deim_table():
        sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
        emit("", "| dtype | batches of 128 x 32 | kernel | batches/s | GB/s | share of copy bandwidth | "
             "vs the block kernel (a thread per row) | "
             f"vs torch.linalg.lu_factor_ex (on {args.peer_batches} batches, extrapolated) | vs a CuPy "
             "lu_factor loop (on 100, extrapolated) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for dt, B, kern, bps, gbs, share, vb, vt, vl in deim_rows(sizes, args.repeats, bw, args.peer_batches):
            emit(f"| {dt} | {B} | {kern} | {bps:.3g} | {gbs:.1f} | {100 * share:.1f}% | {vb:.2f}x | {vt:.1f}x | "
                 f"{vl:.0f}x |")

    def warp_table():
        B = 100_000 if args.quick else 1_000_000
        emit("", f"| warp kernel, float32 128 x 32, {B} batches | registers | spill B (stores / loads) | batches/s | "
             "share of copy bandwidth | pivots |", "|---|---:|---:|---:|---:|---|")
        for mb, regs, (st, ld), bps, share, same in warp_variant_rows(B, args.repeats, bw):
            emit(f"| {'as shipped' if mb is None else f'__launch_bounds__(128, {mb})'} | {regs} | {st} / {ld} | "
                 f"{bps:.3g} | {100 * share:.1f}% | {'the same' if same else 'DIFFERENT'} |")

    def select_table():
        cpu, gpu = select_rows(args.repeats)
        emit("", "| select, 64 batches of 128 x 64 (float32) | Numba on the CPU | GPU | GPU speed-up |",
             "|---|---:|---:|---:|", f"| fraction 0.25 | {1000 * cpu:.1f} ms | {1000 * gpu:.1f} ms | "
             f"{cpu / gpu:.1f}x |")
        import cupy

        F, G = (cupy.asarray(a) for a in select_problem())
        emit("", "| select on the GPU, by stage (each stage synchronised) | wall | device (events) |",
             "|---|---:|---:|")
        for label, wall, dev in select_stages(F, G, args.repeats):
            emit(f"| {label} | {1000 * wall:.2f} ms | {1000 * dev:.2f} ms |")

    def tall_table():
        n_tall = 1_000_000 if args.quick else 10_000_000
        emit("", f"| {n_tall:.0e} x 64, float32 | time | speed-up over lu_factor |", "|---|---:|---:|")
        for name, t, ratio in tall_rows(n_tall, 64, args.repeats):
            emit(f"| {name} | {1000 * t:.1f} ms | {ratio:.1f}x |")

    chosen = set(args.tables.split(","))
    for table in (deim_table, warp_table, select_table, tall_table):
        if table.__name__.removesuffix("_table") not in chosen:
            continue
        try:
            table()
        except Exception:  # noqa: BLE001 - report it, measure the other tables, fail at the end
            failed.append(table.__name__)
            emit("", f"# {table.__name__} FAILED:", *("#   " + ln for ln in traceback.format_exc().splitlines()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
