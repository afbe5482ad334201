"""select_dask and maxvol_dask on data on disk, larger than the workers' memory budget.

Writes the dataset under a scratch directory (default /tmp/graft_bench_dask):
features (N, 64) float32 in Zarr with last-layer gradients (residuals (N, 10),
embeddings (N, 64), float32) beside them, uncompressed, in chunks of
``--chunk-batches`` batches of 128 rows. Then, on the same run:

* ``select_dataset`` (one process, reading the Zarr arrays directly, Numba on
  every core) against ``select_dask`` on a ``distributed.LocalCluster`` of 1
  and of 2 worker processes (one thread each, Numba and BLAS on one thread, a
  memory limit per worker): wall time, rows per second and the peak RSS of
  each worker (psutil samples every 50 ms) at two dataset sizes, to show the
  per-worker memory stays flat as the dataset grows;
* the bytes each chunk sends back (indices, weights, sizes; with GRAFT's
  ``budget="call"`` also each batch's residual curve);
* ``maxvol_dask`` (2 workers, chunks of whole tiles) against the single-machine
  ``graft_array.maxvol(np.memmap, k, method="tournament")`` on a float32
  ``.npy`` memmap (the workers read the same file with pread), with log|det|
  against LU's (scipy.linalg.lu_factor) where an in-memory copy fits.

Prints one table of the measurements and their ratios. ``--quick`` runs small
sizes (a smoke test). Numbers only, no assertions.

    python benchmarks/bench_dask.py [--rows 20000000 5000000] [--maxvol-rows 100000000] [--quick]
"""

import argparse
import os
import shutil
import sys
import threading
import time

import numpy as np

BS = 128
D, C, HD = 64, 10, 64
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_dataset(root, n, chunk_rows):
    """features, residuals, embeddings (float32, standard normal) as uncompressed Zarr arrays under root."""
    import zarr

    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    arrays = {}
    for name, width in (("features", D), ("residuals", C), ("embeddings", HD)):
        where = os.path.join(root, name)
        if hasattr(zarr, "create_array"):  # zarr 3
            arrays[name] = zarr.create_array(store=where, shape=(n, width), chunks=(chunk_rows, width),
                                             dtype="float32", compressors=None)
        else:
            arrays[name] = zarr.open_array(where, mode="w", shape=(n, width), chunks=(chunk_rows, width),
                                           dtype="float32", compressor=None)
    where = os.path.join(root, "labels")  # classes 0..C-1, one per row
    if hasattr(zarr, "create_array"):
        arrays["labels"] = zarr.create_array(store=where, shape=(n,), chunks=(chunk_rows,), dtype="int64",
                                             compressors=None)
    else:
        arrays["labels"] = zarr.open_array(where, mode="w", shape=(n,), chunks=(chunk_rows,), dtype="int64",
                                           compressor=None)
    rng = np.random.default_rng(0)
    for lo in range(0, n, chunk_rows):
        hi = min(n, lo + chunk_rows)
        for name, width in (("features", D), ("residuals", C), ("embeddings", HD)):
            arrays[name][lo:hi] = rng.standard_normal((hi - lo, width), dtype=np.float32)
        arrays["labels"][lo:hi] = rng.integers(0, C, hi - lo)
    return {k: os.path.join(root, k) for k in arrays}


class NpyRows:
    """Rows of a 2-D C-order .npy file read with pread (no mapping), for dask.array.from_array.

    Pickles as its path, not its data; a worker reading through it does not grow its resident memory with
    mapped file pages (which a worker's memory monitor would count against its limit).
    """

    def __init__(self, path):
        self.path = path
        head = np.load(path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = head.shape, head.dtype, head.ndim
        self.offset = head.offset
        del head

    def __getitem__(self, key):
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        lo, hi, _ = rows.indices(self.shape[0])
        width = self.shape[1] * self.dtype.itemsize
        out = np.empty((max(0, hi - lo), self.shape[1]), dtype=self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            buf, done = memoryview(out).cast("B"), 0
            while done < len(buf):
                got = os.preadv(fd, [buf[done:]], self.offset + lo * width + done)
                if got <= 0:
                    raise OSError(f"short read from {self.path}")
                done += got
        finally:
            os.close(fd)
        return out[:, cols]


class RssSampler:
    """Peak resident memory of some processes, sampled every ``every`` seconds in a thread."""

    def __init__(self, pids, every=0.05):
        import psutil

        self.procs = {p: psutil.Process(p) for p in pids}
        self.peak = {p: 0 for p in pids}
        self.base = {p: self.procs[p].memory_info().rss for p in pids}
        self.every, self._stop = every, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for p, proc in self.procs.items():
                try:
                    self.peak[p] = max(self.peak[p], proc.memory_info().rss)
                except Exception:
                    pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _warm():
    """Load the Numba kernels in a worker (from the on-disk cache) before timing."""
    import graft_array as ga

    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, BS, D), dtype=np.float32)
    G = ga.LastLayerGrads(rng.standard_normal((4, BS, C), dtype=np.float32),
                          rng.standard_normal((4, BS, HD), dtype=np.float32))
    ga.select(X, G, random_state=0)
    ga.select(X, G, random_state=0, budget="batch")
    ga.maxvol(rng.standard_normal((5000, 32)).astype(np.float32), 32, method="tournament")
    ga.maxvol(rng.standard_normal((3, 600, 32)).astype(np.float32), 32, method="deim")
    return os.getpid()


def cluster(n_workers, memory_limit):
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1, memory_limit=memory_limit,
                      dashboard_address=":0", env=ONE_THREAD, timeout="120s")
    client = Client(lc, timeout="120s")
    pids = list(client.run(_warm).values())
    return lc, client, pids


def run_select_dask(client, pids, paths, n, budget, out_dir=None, labels=False):
    """select_dask on the first n rows; the selection written per chunk under out_dir (save_selection(...,
    per_chunk=True): only counts come back), or gathered on the client when out_dir is None."""
    import dask.array as da
    from graft_array.adapters.dask import load_selection, save_selection, select_dask

    import graft_array as ga

    X = da.from_zarr(paths["features"])[:n]
    G = ga.LastLayerGrads(da.from_zarr(paths["residuals"])[:n], da.from_zarr(paths["embeddings"])[:n])
    kw = dict(labels=da.from_zarr(paths["labels"])[:n]) if labels else {}
    with RssSampler(pids) as mem:
        t0 = time.perf_counter()
        idx, w, sizes = select_dask(X, G, batch_size=BS, budget=budget, random_state=0, **kw)
        if out_dir is None:
            idx, w = client.compute([idx, w], sync=True)
        else:
            save_selection(out_dir, idx, w, n_samples=n, per_chunk=True)
        dt = time.perf_counter() - t0
    if out_dir is not None:
        idx, w = load_selection(out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
    peak = max(mem.peak[p] - mem.base[p] for p in pids)
    peak_abs = max(mem.peak.values())
    return dt, peak, peak_abs, (idx, w), X.numblocks[0]


def run_select_dataset(paths, n, chunk_rows, budget):
    import zarr
    from graft_array.adapters.numpy import select_dataset

    import graft_array as ga

    X = zarr.open_array(paths["features"], mode="r")
    E = zarr.open_array(paths["residuals"], mode="r")
    H = zarr.open_array(paths["embeddings"], mode="r")

    class Head:  # the first n rows of a zarr array, as select_dataset reads them (len and slices)
        def __init__(self, z):
            self.z = z

        def __len__(self):
            return n

        def __getitem__(self, s):
            return self.z[s.start:min(s.stop, n)]

    with RssSampler([os.getpid()]) as mem:
        t0 = time.perf_counter()
        idx, w = select_dataset(Head(X), ga.LastLayerGrads(Head(E), Head(H)), batch_size=BS,
                                batches_per_call=chunk_rows // BS, budget=budget, progress=False, random_state=0)
        dt = time.perf_counter() - t0
    p = os.getpid()
    return dt, mem.peak[p] - mem.base[p], mem.peak[p], len(idx)


def bench_maxvol(root, n, r, k, client, lu_max):
    import dask.array as da
    from graft_array.adapters.dask import maxvol_dask

    import graft_array as ga
    from graft_array._common import default_tile_rows

    path = os.path.join(root, "V.npy")
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, r))
    rng = np.random.default_rng(1)
    step = 1 << 21
    for lo in range(0, n, step):
        mm[lo:lo + step] = rng.standard_normal((min(step, n - lo), r), dtype=np.float32)
    mm.flush()
    del mm
    V = np.load(path, mmap_mode="r")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        single = np.asarray(ga.maxvol(V, k, method="tournament"))
        t_single = time.perf_counter() - t0
    T = default_tile_rows(n, min(k, r))
    chunk = T * max(1, (1 << 19) // T)  # whole tiles per chunk (about 0.5M rows, 64 MiB)
    Vd = da.from_array(NpyRows(path), chunks=(chunk, r), name="V-" + str(n))
    t0 = time.perf_counter()
    ids = client.compute(maxvol_dask(Vd, k), sync=True)
    t_dask = time.perf_counter() - t0
    ld = lambda rows: float(np.linalg.slogdet(np.asarray(V[np.sort(rows)], dtype=np.float64))[1])
    quality = dict(single=ld(single), dask=ld(ids), same=bool(np.array_equal(ids, single)),
                   warned="; ".join(sorted({f"{w.category.__name__}: {w.message}" for w in caught})))
    try:
        import scipy.linalg

        if n > lu_max:
            raise MemoryError  # an in-memory LU of V would not fit beside the page cache
        t0 = time.perf_counter()
        _, piv = scipy.linalg.lu_factor(np.asarray(V), check_finite=False)
        t_lu = time.perf_counter() - t0
        perm = np.arange(n)
        for j, p in enumerate(piv):
            perm[j], perm[p] = perm[p], perm[j]
        quality["lu"], quality["t_lu"] = ld(perm[:r]), t_lu
    except (ImportError, MemoryError):
        pass
    nchunks = -(-n // chunk)
    return dict(t_single=t_single, t_dask=t_dask, chunk=chunk, nchunks=nchunks, T=T, **quality)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs=2, default=[20_000_000, 5_000_000], help="large and small dataset")
    ap.add_argument("--maxvol-rows", type=int, default=100_000_000)
    ap.add_argument("--lu-max-rows", type=int, default=30_000_000, help="LU's log|det| only up to this many rows")
    ap.add_argument("--chunk-batches", type=int, default=512, help="batches of 128 rows per chunk")
    ap.add_argument("--memory-limit", default="1GiB", help="per dask worker")
    ap.add_argument("--root", default="/tmp/graft_bench_dask")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.maxvol_rows, args.chunk_batches = [400_000, 100_000], 1_000_000, 128
    big, small = args.rows
    chunk_rows = args.chunk_batches * BS
    t_start = time.perf_counter()
    print(f"bench_dask: {os.cpu_count()} CPU(s); dataset {big:,} x ({D} + {C} + {HD}) float32 in Zarr "
          f"({big * 4 * (D + C + HD) / 2**30:.2f} GiB on disk), chunks of {chunk_rows:,} rows; "
          f"worker memory limit {args.memory_limit}", flush=True)
    t0 = time.perf_counter()
    paths = write_dataset(os.path.join(args.root, "data"), big, chunk_rows)
    print(f"  wrote the dataset in {time.perf_counter() - t0:.1f} s", flush=True)
    _warm()
    rows = []

    for budget in ("batch",):
        dt, dpeak, peak, m = run_select_dataset(paths, big, chunk_rows, budget)
        rows.append(dict(what=f"select_dataset, 1 process (Numba x{os.cpu_count()}), budget={budget!r}", n=big,
                         t=dt, peak=dpeak, peak_abs=peak))
        print(f"  {rows[-1]['what']}: {dt:.1f} s", flush=True)

    results = {}
    # (budget, rows, written per chunk?, labels?)
    plan = {1: [("batch", small, True, False)],
            2: [("batch", big, True, False), ("batch", small, True, False), ("batch", big, False, False),
                ("call", small, True, False), ("batch", small, True, True)]}
    out_dir = os.path.join(args.root, "selection")
    for workers in (1, 2):
        for budget, n, per_chunk, labels in plan[workers]:
            # a fresh cluster for each run (a worker's resident memory does not shrink between runs), then a
            # warm-up run of 4 chunks: imports, zarr, the graph
            lc, client, pids = cluster(workers, args.memory_limit)
            try:
                run_select_dask(client, pids, paths, 4 * chunk_rows, budget, None, labels)
                dt, dpeak, peak, out, nchunks = run_select_dask(client, pids, paths, n, budget,
                                                                out_dir if per_chunk else None, labels)
            finally:
                client.close()
                lc.close()
            results[(workers, budget, n, per_chunk, labels)] = out
            how = "written per chunk" if per_chunk else "gathered"
            rows.append(dict(what=f"select_dask, {workers} worker(s), budget={budget!r}"
                                  f"{', labels' if labels else ''}, {how}", n=n,
                             t=dt, peak=dpeak, peak_abs=peak, nchunks=nchunks, sel=len(out[0])))
            print(f"  {rows[-1]['what']} n={n:,}: {dt:.1f} s", flush=True)
    shutil.rmtree(os.path.join(args.root, "data"), ignore_errors=True)  # disk and page cache for V
    lc, client, pids = cluster(2, args.memory_limit)
    try:
        mv = bench_maxvol(args.root, args.maxvol_rows, 32, 32, client, args.lu_max_rows)
    finally:
        client.close()
        lc.close()

    same = all(np.array_equal(a, b) for a, b in zip(results[(1, "batch", small, True, False)],
                                                    results[(2, "batch", small, True, False)]))
    same_io = all(np.array_equal(a, b) for a, b in zip(results[(2, "batch", big, True, False)],
                                                       results[(2, "batch", big, False, False)]))
    rate0 = rows[0]["n"] / rows[0]["t"]
    one = next(r for r in rows if r["what"].startswith("select_dask, 1"))
    rate1 = one["n"] / one["t"]
    print()
    print(f"{'task':<66} {'rows':>11} {'time':>8} {'rows/s':>10} {'peak RSS +':>11} {'peak RSS':>9} "
          f"{'vs select_dataset':>17} {'vs 1 worker':>11}")
    for r in rows:
        rate = r["n"] / r["t"]
        vs1 = f"{rate / rate1:.2f}x" if r["what"].startswith("select_dask") else ""
        print(f"{r['what']:<66} {r['n']:>11,} {r['t']:>7.1f}s {rate:>10,.0f} {r['peak'] / 2**20:>7.0f} MiB "
              f"{r['peak_abs'] / 2**20:>5.0f} MiB {rate / rate0:>16.2f}x {vs1:>11}")
    print("  (rows/s ratios; peak RSS +: the largest increase of one process's resident memory during the run "
          "over its resident memory before; peak RSS: the largest resident memory of one process (per worker for "
          "select_dask: fresh worker processes for each run, after a warm-up run of 4 chunks))")
    print(f"  select_dask with 1 and 2 workers gave the same indices and weights: {same}; written per chunk and "
          f"gathered gave the same: {same_io}")
    sel = next(r for r in rows if r["what"].startswith("select_dask, 2") and r["n"] == big and "gathered" in r["what"])
    per_chunk = chunk_rows * 4 * (D + C + HD)
    back = (sel["sel"] * 16 + (big // BS) * 8) / sel["nchunks"]
    hi = int(np.ceil(1.5 * 0.25 * BS))
    curves = (big // BS) * (hi * 8 + 24) / sel["nchunks"]
    print(f"  bytes per chunk: {per_chunk / 2**20:.1f} MiB read where it lives; back to the client "
          f"{back / 2**10:.1f} KiB (indices, weights, sizes; {back / per_chunk:.2%}); budget='call' adds "
          f"{curves / 2**10:.1f} KiB of residual curves per chunk to the spread task ({curves / per_chunk:.2%})")
    print()
    print(f"maxvol on {args.maxvol_rows:,} x 32 float32 (.npy memmap, {args.maxvol_rows * 128 / 2**30:.2f} GiB), "
          f"k = 32; maxvol_dask on 2 workers, {mv['nchunks']} chunks of {mv['chunk']:,} rows "
          f"(tiles of {mv['T']:,} rows)")
    print(f"  single-machine maxvol(memmap, tournament), Numba x{os.cpu_count()}: {mv['t_single']:.1f} s, "
          f"log|det| {mv['single']:.2f}")
    if mv["warned"]:
        print(f"    it warned: {mv['warned']}")
    print(f"  maxvol_dask, 2 workers x 1 thread:                 {mv['t_dask']:.1f} s, log|det| {mv['dask']:.2f} "
          f"({mv['t_single'] / mv['t_dask']:.2f}x the single machine's speed; same rows: {mv['same']})")
    if "lu" not in mv:
        print(f"  LU: not run above --lu-max-rows={args.lu_max_rows:,} (in-memory copy of V)")
    else:
        print(f"  LU (scipy.linalg.lu_factor, in memory): {mv['t_lu']:.1f} s, log|det| {mv['lu']:.2f}; "
              f"maxvol_dask {100 * (mv['dask'] - mv['lu']) / abs(mv['lu']):+.2f}% of LU's, single machine "
              f"{100 * (mv['single'] - mv['lu']) / abs(mv['lu']):+.2f}%")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
