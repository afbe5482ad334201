"""``graft-array check-gpu``: compile every CUDA kernel, emulate them on the CPU, or run them on a GPU.

    graft-array check-gpu --compile-only [--arch sm_90]   # NVRTC, no GPU needed: a line per kernel
    graft-array check-gpu --emulate                       # the kernels through the CPU shim vs the Numba path
    graft-array check-gpu                                 # on a GPU: compile, then the parity checks on the device
"""

import argparse
import sys

import numpy as np


def _cases(seed=0):
    """Small batches of every kind the kernels must agree on (float32 and float64)."""
    rng = np.random.default_rng(seed)
    out = []
    for dt in (np.float32, np.float64):
        for n, r, kk in ((1, 1, 1), (31, 8, 8), (100, 12, 12), (130, 40, 33)):
            V = rng.standard_normal((3, n, r)).astype(dt)
            if n > 8:
                V[1, 7] = V[1, 3]  # a tie
                V[2, :, r // 2:] = V[2, :, :r - r // 2]  # rank deficient
            out.append((f"{np.dtype(dt).name} {n}x{r} k={kk}", V, kk))
    return out


def _gram_cases(seed=1):
    """Gram systems of the criterion: full rank, a dependent pivot, a zero gradient (kk 1 to 64)."""
    rng = np.random.default_rng(seed)
    out = []
    for kk, d in ((1, 4), (12, 30), (40, 20), (64, 64)):
        G = rng.standard_normal((3, kk, d))
        if kk > 2:
            G[1, kk // 2] = 2.0 * G[1, 0]
        g = rng.standard_normal((3, d))
        g[2] = 0.0
        K = G @ G.transpose(0, 2, 1)
        out.append((f"{kk}x{kk} (rank <= {d})", K, np.einsum("bkd,bd->bk", G, g), np.einsum("bd,bd->b", g, g)))
    return out


def _facility_cases(seed=2):
    """CRAIG's facility location: (name, Grams K (B, n, n), m, the Numba kernel's (order, weights)); duplicate
    rows and equal similarities (ties), a block of 1024 threads and one of a warp."""
    from ..strategies._batch import batch_gram_plain_nb
    from ..strategies.facility import facility_location_plain_nb

    rng = np.random.default_rng(seed)
    out = []
    for n, p, m in ((7, 3, 7), (300, 5, 60), (1024, 16, 40)):
        G = rng.standard_normal((2, n, p))
        G[0, 5] = G[0, n - 1]
        G[1, :3] = 0.0
        K = np.stack([batch_gram_plain_nb(G[b])[0] for b in range(2)])
        out.append((f"{n}x{n} m={m}", K, m, facility_location_plain_nb(G, m, True)[:2]))
    return out


def _compare_close(name, got, want):
    """The weights: the same active set, values to 1e-6 of the largest (the Numba fit reassociates its dots)."""
    ok = np.array_equal(got > 0, want > 0) and np.allclose(got, want, rtol=1e-6,
                                                            atol=1e-6 * max(1.0, float(np.abs(want).max())))
    print(f"{name:<40} {'same as the Numba path (to 1e-6)' if ok else 'DIFFERENT from the Numba path'}")
    return ok


def _compare(name, got, want):
    ok = np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    print(f"{name:<40} {'same as the Numba path' if ok else 'DIFFERENT from the Numba path'}")
    return ok


def main(argv=None, prog="graft-array check-gpu"):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--compile-only", action="store_true", help="NVRTC compilation only (no GPU needed)")
    ap.add_argument("--arch", action="append", help="sm_XX (repeatable); default: sm_80 and sm_90, or the "
                    "device's own with a GPU")
    ap.add_argument("--emulate", action="store_true", help="run the kernels through the CPU shim (g++ >= 11)")
    args = ap.parse_args(argv)
    from .._numba.criterion import nnls_batched, rho_curve
    from .._numba.maxvol import run_maxvol
    from .._numba.rect import _rect_batched
    from . import build
    from . import criterion as ccrit
    from . import deim as cdeim
    from . import facility as cfac
    from . import nnls as cnnls
    from . import rect as crect
    from . import refine as cref
    from . import tournament as ctour
    from . import volume as cvol

    ok = True
    if args.emulate:
        for name, V, kk in _cases():
            want = run_maxvol(V, kk, method="deim")[:2]
            ok &= _compare("deim_batched " + name, cdeim.emulate_deim_batched(V, kk)[:2], want)
            if cdeim.warp_instance(V.dtype, *V.shape[1:], kk):
                ok &= _compare("deim_warp " + name, cdeim.emulate_deim_batched(V, kk, warp=True)[:2], want)
            ok &= _compare("deim_tall " + name, cdeim.emulate_deim_tall(V, kk), want)
            if cvol.fits(*V.shape[1:]):
                ok &= _compare("volume_batched " + name, cvol.emulate_volume_batched(V, kk),
                               run_maxvol(V, kk, method="volume")[:2])
        for name, V, kk in _cases():
            tiles = max(2 * kk, 16)
            ok &= _compare(f"deim_tiles {name} tiles={tiles}", ctour.emulate_tournament(V, kk, tiles),
                           run_maxvol(V, kk, method="tournament", tile_rows=tiles)[:2])
        for dt in (np.float32, np.float64):
            T = np.random.default_rng(2).standard_normal((1500, 12)).astype(dt)
            ok &= _compare(f"volume_tall {np.dtype(dt).name} 1500x12", cvol.emulate_volume_tall(T, 12),
                           tuple(a[0] if a.ndim > 1 else a for a in run_maxvol(T[None], 12, method="volume")[:2]))
        for name, V, kk in _cases():
            piv, rank, _, _ = run_maxvol(V, kk, method="deim")
            conv, iters = cref.emulate_refine(V, piv, rank, 1.01, 20)
            want = run_maxvol(V, kk, method="deim", refine=True, tol=1.01, max_iters=20)
            ok &= _compare("refine " + name, (piv, iters), (want[0], want[3]))
        for name, K, b, gg in _gram_cases():
            ok &= _compare("rho_curve " + name, ccrit.emulate_rho_curve(K, b, gg), rho_curve(K, b, gg))
        for name, K, b, gg in _gram_cases():
            sizes = np.maximum(1, np.arange(K.shape[0]) % (K.shape[1] + 1))
            got, want = cnnls.emulate_nnls_weights(K, b, sizes, 128.0, 0.0), nnls_batched(K, b, sizes, 128.0, 0.0)
            ok &= _compare_close("nnls_weights " + name, got, want)
        for name, K, m, want in _facility_cases():
            ok &= _compare("facility_location " + name, cfac.emulate_facility_location(K, m), want)
        for name, V, kk in _cases():
            n, r = V.shape[1:]
            if crect.fits(n, r, min(n, 2 * r)):
                piv, rank, _, _ = run_maxvol(V, r, method="deim")
                k = min(n, 2 * r)
                ok &= _compare(f"rect_extend {name} -> k={k}", (crect.emulate_rect_extend(V, piv, rank, k), rank),
                               (_rect_batched(V, piv, rank, k), rank))
        return 0 if ok else 1
    gpu = False
    if not args.compile_only:
        try:
            import cupy

            gpu = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception as e:  # noqa: BLE001 - no driver, no device: say so and compile only
            print(f"# no usable GPU ({type(e).__name__}: {e}); compiling only")
    archs = args.arch
    if not archs:
        if gpu:
            import cupy

            cc = cupy.cuda.Device().compute_capability
            archs = [f"sm_{cc}"]
        else:
            archs = list(build.ARCHS)
    for arch in archs:
        for src, kernels in build.KERNELS.items():
            try:
                cubin, log = build.compile_nvrtc(src, arch)
            except RuntimeError as e:
                print(e, file=sys.stderr)
                ok = False
                continue
            res = build.resources(log)
            if not res:  # seen on a GPU machine (CUDA 13): say what the log held instead
                print(f"{arch} {src}: no ptxas resource lines in the compiler log ({len(log)} characters: "
                      f"{log[:200]!r})")
            for kname, _ in kernels:
                r = res.get(kname)
                if r is None:
                    if kname.encode() in cubin:
                        print(f"{arch} {src} {kname}: in the cubin (no resource report)")
                    else:
                        print(f"{arch} {src} {kname}: MISSING from the cubin")
                        ok = False
                    continue
                print(f"{arch} {src} {kname}: {r['registers']} registers, {r['smem']} B shared, "
                      f"{r['spill_stores']} B spill stores")
    if gpu:
        import cupy

        for name, V, kk in _cases():
            want = run_maxvol(V, kk, method="deim")[:2]
            piv, rank, _ = cdeim.deim_batched(cupy.asarray(V), kk, warp=False)
            ok &= _compare("GPU deim_batched " + name, (piv.get(), rank.get()), want)
            if cdeim.warp_instance(V.dtype, *V.shape[1:], kk):
                piv, rank, _ = cdeim.deim_batched(cupy.asarray(V), kk, warp=True)
                ok &= _compare("GPU deim_warp " + name, (piv.get(), rank.get()), want)
            piv, rank = cdeim.deim_tall(cupy.asarray(V), kk)
            ok &= _compare("GPU deim_tall " + name, (piv.get(), rank.get()), want)
            if cvol.fits(*V.shape[1:]):
                piv, rank = cvol.volume_batched(cupy.asarray(V), kk)
                ok &= _compare("GPU volume_batched " + name, (piv.get(), rank.get()),
                               run_maxvol(V, kk, method="volume")[:2])
        for name, V, kk in _cases():
            n, r = V.shape[1:]
            if crect.fits(n, r, min(n, 2 * r)):
                k = min(n, 2 * r)
                piv, rank, _, _ = run_maxvol(V, r, method="deim")
                got = crect.rect_extend(cupy.asarray(V), cupy.asarray(piv), cupy.asarray(rank), k)
                ok &= _compare(f"GPU rect_extend {name} -> k={k}", (got.get(), rank),
                               (_rect_batched(V, piv, rank, k), rank))
        for name, V, kk in _cases():
            piv, rank, _, _ = run_maxvol(V, kk, method="deim")
            got = cupy.asarray(piv)
            _, iters = cref.refine(cupy.asarray(V), got, cupy.asarray(rank), 1.01, 20)
            want = run_maxvol(V, kk, method="deim", refine=True, tol=1.01, max_iters=20)
            ok &= _compare("GPU refine " + name, (got.get(), iters.get()), (want[0], want[3]))
            tiles = max(2 * kk, 16)
            piv, rank = ctour.tournament(cupy.asarray(V), kk, tiles)
            ok &= _compare(f"GPU deim_tiles {name} tiles={tiles}", (piv.get(), rank.get()),
                           run_maxvol(V, kk, method="tournament", tile_rows=tiles)[:2])
        for name, K, b, gg in _gram_cases():
            sizes = np.maximum(1, np.arange(K.shape[0]) % (K.shape[1] + 1))
            got = cnnls.nnls_weights(cupy.asarray(K), cupy.asarray(b), cupy.asarray(sizes), 128.0, 0.0)
            ok &= _compare_close("GPU nnls_weights " + name, got.get(), nnls_batched(K, b, sizes, 128.0, 0.0))
            rho, skipped = ccrit.rho_curve(cupy.asarray(K), cupy.asarray(b), cupy.asarray(gg))
            ok &= _compare("GPU rho_curve " + name, (rho.get(), skipped.get()), rho_curve(K, b, gg))
        for name, K, m, want in _facility_cases():
            order, w = cfac.facility_location(cupy.asarray(K), m)
            ok &= _compare("GPU facility_location " + name, (order.get(), w.get()), want)
    return 0 if ok else 1
