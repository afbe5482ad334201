"""The CUDA kernels: NVRTC compilation, the CPU shim, the NumPy lockstep references, and (with a GPU) the device.

No GPU on the CI machines: the sources are compiled by NVRTC for sm_80 and
sm_90 (``[gpu]`` extra), executed on the CPU through ``shim.h`` (g++ >= 11),
and their reduction order and tie rules are checked through the lockstep
references; the ``gpu``-marked tests run only where a device is present.
"""

import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from graft_array._cuda import build, lockstep
from graft_array._cuda import deim as cdeim
from graft_array._numba.maxvol import run_maxvol
from graft_array.testing import lu_pivots, reference_deim


def _numba(V, kk):
    piv, rank, _, _ = run_maxvol(V, kk, method="deim")
    return piv, rank


def _bounded(fn, *args, timeout=120):
    """``fn(*args)`` on a daemon thread: a deadlocked shim (a divergent shuffle or barrier) fails the test."""
    box = {}

    def run():
        try:
            box["out"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"the CPU shim did not finish within {timeout} s (a deadlock: divergent barrier or shuffle?)")
    if "err" in box:
        raise box["err"]
    return box["out"]


def _nvrtc_available():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
        return True
    except Exception:  # noqa: BLE001 - no cupy, or no libnvrtc
        return False


needs_nvrtc = pytest.mark.skipif(not _nvrtc_available(), reason="needs cupy's NVRTC (the [gpu] extra)")
needs_cxx = pytest.mark.skipif(build.compiler() is None, reason="needs a C++20 compiler for the CPU shim")


def _gpu_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- NVRTC


@needs_nvrtc
@pytest.mark.parametrize("arch", build.ARCHS)
@pytest.mark.parametrize("src", sorted(build.KERNELS))
def test_every_kernel_instance_compiles_to_a_cubin(src, arch):
    cubin, log = build.compile_nvrtc(src, arch)
    assert len(cubin) > 1000 and cubin[:4] == b"\x7fELF"
    res = build.resources(log)
    for name, _ in build.KERNELS[src]:
        assert name in res, f"{name} missing from the {arch} cubin"
        assert res[name]["registers"] is not None and 0 < res[name]["registers"] <= 255


@needs_nvrtc
def test_bench_gpu_warp_variant_caps_the_registers(monkeypatch):
    """bench_gpu's occupancy variants of the warp kernel compile, and the launch bounds cap the registers so that
    3 blocks of 128 threads fit an SM's 65536 (the shipped instance's 228 fit 2)."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        bench = importlib.import_module("bench_gpu")
        src0, regs0, _ = bench.warp_variant("deim_warp_f32_r32_q4", None)
        src3, regs3, _ = bench.warp_variant("deim_warp_f32_r32_q4", 3)
    finally:
        sys.modules.pop("bench_gpu", None)
    assert "__launch_bounds__(32 * GRAFT_WARPS, 3)" in src3 and src3.replace(", 3)", ")", 1) == src0
    assert regs0 * 128 * 3 > 65536 >= regs3 * 128 * 3


@needs_nvrtc
def test_a_generated_instance_compiles_alone():
    """A launch compiles one instance of deim_warp.cu (seconds), not all of them (a minute)."""
    text = build.full_source("deim_warp.cu", "deim_warp_f32_r8_q2")
    assert text.count("GRAFT_DEIM_WARP_INSTANCE(") == 2  # the macro's definition and the one instance
    res = build.resources(build.compile_nvrtc("deim_warp.cu", code=text)[1])
    assert set(res) == {"deim_warp_f32_r8_q2"}


@needs_nvrtc
def test_a_broken_source_fails_with_the_compiler_log(monkeypatch):
    real = build.source
    monkeypatch.setattr(build, "source", lambda name: real(name).replace("block_max(amax, s_val)", "block_max(amax)"))
    with pytest.raises(RuntimeError, match=r"NVRTC could not compile deim.cu for sm_90:\n.*error"):
        build.compile_nvrtc("deim.cu", "sm_90")


def test_resources_parses_the_ptxas_log():
    log = """ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
ptxas         .     0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 428 bytes smem
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Used 12 registers"""
    assert build.resources(log) == {
        "k1": dict(registers=40, smem=428, spill_stores=8, spill_loads=4),
        "k2": dict(registers=12, smem=0, spill_stores=0, spill_loads=0),
    }


@needs_nvrtc
def test_check_gpu_compile_only_prints_a_line_per_kernel():
    out = subprocess.run([sys.executable, "-m", "graft_array", "check-gpu", "--compile-only", "--arch", "sm_90"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    names = [(src, name) for src in build.KERNELS for name, _ in build.KERNELS[src]]
    assert len(lines) == len(names)
    for (src, name), line in zip(names, lines):
        assert line.startswith(f"sm_90 {src} {name}: ") and "registers" in line and "B shared" in line


# --------------------------------------------------------------------------- the CPU shim


def _cases(rng, dt):
    yield rng.standard_normal((2, 1, 1)).astype(dt), 1
    yield rng.standard_normal((3, 31, 8)).astype(dt), 8
    yield rng.standard_normal((2, 33, 9)).astype(dt), 9  # two warps, R = 16
    yield rng.standard_normal((2, 257, 20)).astype(dt), 17  # nine warps, kk < r
    yield rng.standard_normal((1, 80, 64)).astype(dt), 64  # R = 64


@needs_cxx
@pytest.mark.parametrize("warp", [False, None])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_shim_runs_the_kernel_and_matches_numba_and_lapack(dt, warp, rng):
    for V, kk in _cases(rng, dt):
        piv, rank, bad = _bounded(lambda V, kk: cdeim.emulate_deim_batched(V, kk, warp=warp), V, kk)
        want_piv, want_rank = _numba(V, kk)
        np.testing.assert_array_equal(piv, want_piv)
        np.testing.assert_array_equal(rank, want_rank)
        assert not bad.any()
        for b in range(V.shape[0]):  # full-rank random data: LAPACK getrf's pivots
            np.testing.assert_array_equal(piv[b], lu_pivots(V[b, :, :kk].astype(np.float64)))


@needs_cxx
@pytest.mark.parametrize("warp", [False, True])
def test_shim_ties_fill_rows_scaling_and_nonfinite_batches(warp, rng):
    V = rng.standard_normal((7, 40, 6))
    V[0] = np.round(V[0])  # many exact ties: the lowest row index wins
    V[1] = 0.0  # every step a fill row
    V[2, :, 3:] = V[2, :, :3]  # rank 3: fill rows after three pivots
    V[3] *= 1e300  # outside the elimination band: exact power-of-two scaling
    V[4] *= 1e-300
    V[5, 11, 2] = np.nan
    V[6, 0, 0] = np.inf
    piv, rank, bad = _bounded(lambda V, kk: cdeim.emulate_deim_batched(V, kk, warp=warp), V, 6)
    np.testing.assert_array_equal(bad, [0, 0, 0, 0, 0, 1, 1])
    good = V[:5]
    want_piv, want_rank = _numba(good, 6)
    np.testing.assert_array_equal(piv[:5], want_piv)
    np.testing.assert_array_equal(rank[:5], want_rank)
    np.testing.assert_array_equal(rank[:5], [6, 0, 3, 6, 6])
    for b in range(5):
        np.testing.assert_array_equal(piv[b], reference_deim(good[b], 6)[0])
    f32 = (V[:5] * 1e-290).astype(np.float32)  # float32 with subnormal-free, band-crossing values
    np.testing.assert_array_equal(_bounded(lambda V, kk: cdeim.emulate_deim_batched(V, kk, warp=warp), f32, 6)[0],
                                  _numba(f32, 6)[0])


@needs_cxx
@given(st.integers(1, 6), st.integers(1, 256), st.integers(1, 32), st.integers(1, 32),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
@example(B=6, n=2, r=2, kk=1, dt=np.float32, seed=0)  # a -0.0 candidate: its sign bit once outranked 1.0
def test_shim_warp_kernel_is_the_numba_kernel(B, n, r, kk, dt, seed):
    """The warp kernel (one warp per batch, rows in registers): Numba's pivots and ranks, bit for bit, with
    ties, duplicate rows, rank-deficient, zero, band-crossing and non-finite batches among the others."""
    kk = min(kk, r, n)
    if cdeim.warp_instance(dt, n, r, kk) is None:
        with pytest.raises(ValueError, match="warp=True needs"):
            cdeim.emulate_deim_batched(np.zeros((1, n, r), dt), kk, warp=True)
        return
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((B, n, r)).astype(dt)
    kinds = rng.permutation(6)[:B]
    for b, kind in enumerate(kinds):
        if kind == 1:
            V[b] = np.round(V[b])  # ties
        elif kind == 2 and r > 1:
            V[b, :, r // 2:] = V[b, :, :r - r // 2]  # rank deficient: fill rows
        elif kind == 3:
            V[b] = 0.0
        elif kind == 4:
            V[b] *= dt(1e-30) if dt == np.float32 else 1e-300  # out of the elimination band: scaled
        elif kind == 5:
            V[b, rng.integers(n), rng.integers(r)] = np.nan
    piv, rank, bad = _bounded(lambda V, kk: cdeim.emulate_deim_batched(V, kk, warp=True), V, kk)
    fin = np.isfinite(V).all(axis=(1, 2))
    np.testing.assert_array_equal(bad, ~fin)
    np.testing.assert_array_equal(piv[~fin], np.broadcast_to(np.arange(kk), (int((~fin).sum()), kk)))
    if fin.any():
        want_piv, want_rank = _numba(V[fin], kk)
        np.testing.assert_array_equal(piv[fin], want_piv)
        np.testing.assert_array_equal(rank[fin], want_rank)


@needs_cxx
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_shim_tall_deim_is_the_numba_kernel(dt, rng):
    """deim_tall.cu over a grid of blocks (each step a scan and a commit): the Numba kernel's pivots and ranks
    with ties across blocks, duplicate rows, rank deficiency (fill rows), a zero matrix and a band-crossing one."""
    V = rng.standard_normal((5, 1300, 12)).astype(dt)
    V[0] = np.round(V[0])  # many exact ties, across the blocks' slices
    V[1, 1100] = V[1, 3]
    V[2, :, 6:] = V[2, :, :6]  # rank 6: fill rows
    V[3] = 0.0
    V[4] *= dt(1e-30) if dt == np.float32 else 1e-300
    piv, rank = _bounded(cdeim.emulate_deim_tall, V, 12)
    want_piv, want_rank = _numba(V, 12)
    np.testing.assert_array_equal(piv, want_piv)
    np.testing.assert_array_equal(rank, want_rank)
    np.testing.assert_array_equal(rank, [12, 12, 6, 0, 12])
    one = _bounded(lambda V, kk: cdeim.emulate_deim_tall(V, kk, threads=32, max_blocks=7), V[1:2, :, :9], 9)
    np.testing.assert_array_equal(one[0], _numba(V[1:2, :, :9], 9)[0])
    assert cdeim.fits_tall(1, 1300, 12) and not cdeim.fits_tall(0, 1300, 12) and not cdeim.fits_tall(1, 5, 6)
    with pytest.raises(ValueError, match="got B=1, n=5, kk=6"):
        cdeim.emulate_deim_tall(np.zeros((1, 5, 6)), 6)


def test_launch_converts_numbers_to_the_kernels_parameter_types(monkeypatch):
    """build.launch, emulate's GPU twin: the kernel's source, the grid as a tuple, numbers as their C types; and
    both refuse a wrong buffer (count, element type, strides) with a TypeError naming it, before any launch."""
    cupy = pytest.importorskip("cupy")
    calls = []
    monkeypatch.setattr(build, "function", lambda src, kernel, fmad: lambda *a: calls.append((src, kernel, fmad, a)))
    monkeypatch.setattr(cupy, "ndarray", np.ndarray)  # NumPy arrays stand for device arrays here
    f32, f64, i32, i64, u8 = (np.zeros(4, t) for t in (np.float32, np.float64, np.int32, np.int64, np.uint8))
    build.launch("deim_tall_scan_f32", (3, 2), 64, 10, 4, 1, f32, f32, f64, u8, i32, f64, i32, f64, i32, fmad=True)
    build.launch("deim_batched_f64_r8", 5, 32, f64, 9, 8, 8, 0.5, i64, i64, i32)
    (src, kernel, fmad, (grid, block, args)), second = calls
    assert (src, kernel, fmad, grid, block) == ("deim_tall.cu", "deim_tall_scan_f32", True, (3, 2), (64,))
    assert [type(a) for a in args[:3]] == [np.int64, np.int32, np.int32] and args[3] is f32
    assert second[0] == "deim.cu" and second[3][0] == (5,) and type(second[3][2][4]) is np.float64
    for run in (build.launch, build.emulate):
        with pytest.raises(TypeError, match=r"argument 5 \(long long\*\) must be a C-contiguous numpy.ndarray of "
                                            r"int64; got ndarray of int32"):
            run("deim_batched_f64_r8", 5, 32, f64, 9, 8, 8, 0.5, i32, i64, i32)
        with pytest.raises(TypeError, match=r"argument 0 \(const double\*\) .* of float64; got ndarray of "
                                            r"float64 \(strided\)"):
            run("deim_batched_f64_r8", 5, 32, np.zeros(8)[::2], 9, 8, 8, 0.5, i64, i64, i32)
        with pytest.raises(TypeError, match=r"argument 0 .* got float64 of float64$"):  # a scalar is no buffer
            run("deim_batched_f64_r8", 5, 32, np.float64(1.0), 9, 8, 8, 0.5, i64, i64, i32)
        with pytest.raises(TypeError, match="takes 8 arguments; got 7"):
            run("deim_batched_f64_r8", 5, 32, f64, 9, 8, 8, 0.5, i64, i64)
    assert len(calls) == 2
    monkeypatch.undo()
    with pytest.raises(TypeError, match=r"argument 0 \(const double\*\) must be a C-contiguous cupy.ndarray"):
        build.launch("deim_batched_f64_r8", 5, 32, f64, 9, 8, 8, 0.5, i64, i64, i32)  # a host array on the GPU


def test_warp_instances_cover_their_shapes():
    names = {n for n, _ in build.KERNELS["deim_warp.cu"]}
    assert names == set(build.GENERATED["deim_warp.cu"])  # one generated line per declared instance
    assert cdeim.warp_instance(np.float32, 128, 32, 32) == "deim_warp_f32_r32_q4"
    assert cdeim.warp_instance(np.float64, 128, 32, 32) is None  # 256 registers of rows: the block kernel
    assert cdeim.warp_instance(np.float64, 64, 32, 32) == "deim_warp_f64_r32_q2"
    assert cdeim.warp_instance(np.float32, 257, 8, 8) is None and cdeim.warp_instance(np.float32, 6, 6, 6) == \
        "deim_warp_f32_r8_q1"
    assert cdeim.warp_instance(np.float32, 100, 40, 12) is None  # r > 32: the block kernel
    assert cdeim.warp_instance(np.float32, 4, 8, 4) == "deim_warp_f32_r8_q1"
    assert cdeim.warp_instance(np.float32, 3, 8, 4) is None  # n < kk
    for dt in (np.float32, np.float64):
        for n in range(1, 257):
            for r in (1, 7, 8, 9, 16, 17, 31, 32):
                w = cdeim.warp_instance(dt, n, r, min(r, n))
                assert w is None or w in names


def _gram_problem(rng, B, kk, d, *, deficient=True):
    G = rng.standard_normal((B, kk, d))
    if deficient and kk > 2:
        G[0, kk // 2] = 2.0 * G[0, 0]  # a dependent pivot: skipped
    g = rng.standard_normal((B, d))
    K = G @ G.transpose(0, 2, 1)
    return K, np.einsum("bkd,bd->bk", G, g), np.einsum("bd,bd->b", g, g)


@needs_cxx
def test_shim_rho_curve_is_bitwise_the_numba_one(rng):
    from graft_array._cuda import criterion as ccrit
    from graft_array._numba.criterion import rho_curve

    for B, kk, d in ((1, 1, 3), (3, 7, 5), (2, 32, 40), (2, 33, 20), (1, 64, 64)):
        K, b, gg = _gram_problem(rng, B, kk, d)
        if B > 1:
            gg[1] = 0.0  # a zero gradient: rho = 0
            K[1, 3, 3] = 0.0 if kk > 3 else K[1, 3 % kk, 3 % kk]
        rho, skipped = _bounded(ccrit.emulate_rho_curve, K, b, gg)
        want_rho, want_skipped = rho_curve(K, b, gg)
        np.testing.assert_array_equal(rho, want_rho)  # the same operations in the same order: the same bits
        np.testing.assert_array_equal(skipped, want_skipped)
    assert ccrit.instance(1) == "rho_curve_k32" and ccrit.instance(33) == "rho_curve_k64"
    assert ccrit.fits(64) and not ccrit.fits(65)


@needs_cxx
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 30), st.integers(0, 2**31))
def test_shim_rho_curve_property(B, kk, d, seed):
    from graft_array._cuda import criterion as ccrit
    from graft_array._numba.criterion import rho_curve

    K, b, gg = _gram_problem(np.random.default_rng(seed), B, kk, d)
    rho, skipped = _bounded(ccrit.emulate_rho_curve, K, b, gg)
    want_rho, want_skipped = rho_curve(K, b, gg)
    np.testing.assert_array_equal(rho, want_rho)
    np.testing.assert_array_equal(skipped, want_skipped)
    assert (np.diff(rho, axis=1) <= 1e-12).all()  # adding rows never grows the residual


@needs_cxx
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_shim_rect_extension_is_the_numba_one(dt, rng):
    from graft_array._cuda import rect as crect
    from graft_array._numba.rect import _rect_batched
    from graft_array.testing import reference_rect

    for n, r, k in ((12, 2, 5), (50, 5, 12), (100, 20, 60), (100, 64, 80), (300, 9, 40)):
        V = rng.standard_normal((3, n, r)).astype(dt)
        V[1] *= 1e200 if dt is np.float64 else 1e30  # outside the band: the scaled copy
        V[2, :, r // 2:] = 0.0  # rank deficient: fill rows by norm
        piv, rank, _, _ = run_maxvol(V, r, method="deim")
        got = _bounded(crect.emulate_rect_extend, V, piv, rank, k)
        np.testing.assert_array_equal(got, _rect_batched(V, piv, rank, k))
        if dt is np.float64 and n <= 100:
            np.testing.assert_array_equal(got[0], reference_rect(V[0], piv[0], k))  # the greedy determinant
    assert crect.fits(1024, 64, 100) and not crect.fits(1025, 4, 8) and not crect.fits(100, 65, 80)
    assert not crect.fits(10, 4, 4) and not crect.fits(10, 4, 11)


@needs_cxx
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_shim_volume_is_the_numba_one_and_lapack_qrcp(dt, rng):
    from graft_array._cuda import volume as cvol
    from graft_array.testing import qrcp_pivots

    for n, r, kk in ((1, 1, 1), (50, 5, 5), (130, 20, 12), (300, 64, 64), (1000, 16, 16)):
        V = rng.standard_normal((3, n, r)).astype(dt)
        if n > 1:
            V[1] *= 1e200 if dt is np.float64 else 1e30  # outside the band: the scaled copy
            V[2, :, r // 2:] = 0.0  # rank deficient: fill rows by norm
        piv, rank = _bounded(cvol.emulate_volume_batched, V, kk)
        want_piv, want_rank, _, _ = run_maxvol(V, kk, method="volume")
        np.testing.assert_array_equal(piv, want_piv)
        np.testing.assert_array_equal(rank, want_rank)
        np.testing.assert_array_equal(piv[0], qrcp_pivots(V[0].astype(np.float64), kk))  # scipy's geqp3
    assert cvol.fits(1024, 64) and not cvol.fits(1025, 4) and not cvol.fits(100, 65)


@needs_cxx
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_shim_tall_volume_is_the_numba_one(dt, rng):
    from graft_array._cuda import volume as cvol
    from graft_array.testing import qrcp_pivots

    for n, r, kk in ((3000, 16, 16), (2000, 40, 30), (1100, 5, 5)):
        V = rng.standard_normal((n, r)).astype(dt)
        piv, rank = _bounded(cvol.emulate_volume_tall, V, kk, timeout=300)
        want_piv, want_rank, _, _ = run_maxvol(V[None], kk, method="volume")
        np.testing.assert_array_equal(piv, want_piv[0])
        np.testing.assert_array_equal(rank, want_rank)
        np.testing.assert_array_equal(piv, qrcp_pivots(V.astype(np.float64), kk))
    V = rng.standard_normal((2000, 12)).astype(dt)
    V[:, 6:] = 0.0  # rank 6: fill rows
    V[1000:] = V[:1000] + 1e-9  # near duplicates: geqp3's recomputation
    piv, rank = _bounded(cvol.emulate_volume_tall, V, 12, timeout=300)
    want_piv, want_rank, _, _ = run_maxvol(V[None], 12, method="volume")
    np.testing.assert_array_equal(piv, want_piv[0])
    np.testing.assert_array_equal(rank, want_rank)
    assert cvol.fits_tall(10**8, 64) and not cvol.fits_tall(100, 65)


@needs_cxx
def test_shim_volume_recomputes_where_geqp3_does(rng):
    """Nearly dependent rows: the downdated norms fall below sqrt(eps) of their start and are recomputed."""
    from graft_array._cuda import volume as cvol

    base = rng.standard_normal((1, 60, 6))
    V = base + 1e-9 * rng.standard_normal((1, 60, 6))
    V[0, 30:] = V[0, :30] + 1e-10 * rng.standard_normal((30, 6))
    piv, rank = _bounded(cvol.emulate_volume_batched, V, 6)
    want_piv, want_rank, _, _ = run_maxvol(V, 6, method="volume")
    np.testing.assert_array_equal(piv, want_piv)
    np.testing.assert_array_equal(rank, want_rank)


@needs_cxx
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_shim_tournament_and_tall_deim_are_the_numba_ones(dt, rng):
    from graft_array._cuda import tournament as ctour
    from graft_array.testing import reference_tournament

    for B, n, r, kk, tiles in ((2, 1000, 8, 8, 64), (1, 5000, 16, 16, 256), (3, 300, 5, 5, 300),
                               (2, 2000, 32, 20, 100), (1, 700, 4, 4, 9)):
        V = rng.standard_normal((B, n, r)).astype(dt)
        if B > 1:
            V[1, :, r // 2:] = 0.0  # rank deficient: fill rows in the tiles
            V[0, 17] = V[0, n - 1]  # a tie across tiles
        piv, rank = _bounded(ctour.emulate_tournament, V, kk, tiles, timeout=300)
        want_piv, want_rank, _, _ = run_maxvol(V, kk, method="tournament", tile_rows=tiles)
        np.testing.assert_array_equal(piv, want_piv)
        np.testing.assert_array_equal(rank, want_rank)
        np.testing.assert_array_equal(piv[0], reference_tournament(V[0], kk, tile_rows=tiles)[0])
    V = rng.standard_normal((2, 3000, 24)).astype(dt)  # tall DEIM: one tile of every row
    V[1] *= 1e-300 if dt is np.float64 else 1e-30
    piv, rank = _bounded(ctour.emulate_tournament, V, 24, 3000, timeout=300)
    np.testing.assert_array_equal(piv, run_maxvol(V, 24, method="deim")[0])
    if dt is np.float64:
        np.testing.assert_array_equal(piv[0], lu_pivots(V[0]))
    levels = ctour._levels(1000, 8, 64)
    assert levels[-1][1] == 1 and [lv[0] for lv in levels] == [1000, 128, 16]
    assert ctour.fits_tiles(65535 * 16, 8, 16) and not ctour.fits_tiles(65535 * 16 + 1, 8, 16)


@needs_cxx
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_shim_refine_makes_the_numba_swaps(dt, rng):
    from graft_array._cuda import refine as cref
    from graft_array.testing import reference_refine

    for B, n, r, k, tol in ((3, 100, 12, 12, 1.01), (2, 300, 40, 30, 1.05), (2, 64, 8, 8, 1.0), (1, 50, 6, 6, 2.0)):
        V = rng.standard_normal((B, n, r)).astype(dt)
        if B > 1:
            V[1] *= 1e200 if dt is np.float64 else 1e30  # outside the band: the scaled copy
        if B > 2:
            V[2] = np.repeat(V[2, :, :1], r, axis=1)  # rank 1: not refined
        piv, rank, _, _ = run_maxvol(V, k, method="deim")
        got_piv = piv.copy()
        conv, iters = _bounded(cref.emulate_refine, V, got_piv, rank, tol, 7)
        want = run_maxvol(V, k, method="deim", refine=True, tol=tol, max_iters=7)
        np.testing.assert_array_equal(got_piv, want[0])
        np.testing.assert_array_equal(conv, want[2])
        np.testing.assert_array_equal(iters, want[3])
        if dt is np.float64 and rank[0] == k:
            np.testing.assert_array_equal(got_piv[0], reference_refine(V[0, :, :k], piv[0], tol=tol, max_iters=7)[0])
    assert cref.fits(1024, 64) and not cref.fits(1025, 4) and not cref.fits(100, 65)


@given(st.integers(0, 4), st.integers(0, 9), st.integers(0, 5), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**31))
def test_abs_max_is_the_max_of_abs_without_a_copy(B, n, r, dt, seed):
    """build.abs_max (the tall launchers' scale, two reductions and no |V|-sized temporary) equals
    abs(V).max() per batch, negative-dominant, zero and empty batches included."""
    V = (np.random.default_rng(seed).standard_normal((B, n, r)) * 10.0 ** (seed % 7 - 3)).astype(dt)
    if B and seed % 3 == 0:
        V[0] = -np.abs(V[0])
    if B > 1 and seed % 5 == 0:
        V[-1] = 0.0
    got = build.abs_max(np, V)
    want = np.abs(V).reshape(B, -1).max(axis=1) if V.size else np.zeros(B)
    assert got.dtype == np.float64 and got.shape == (B,)
    np.testing.assert_array_equal(got, want)


def test_every_launcher_compiles_with_fmad_false_by_default():
    """What ships is what the parity checks run: every launcher, build.function, build.launch and NVRTC's
    options default to --fmad=false (a multiply and an add fused only where the source writes fma)."""
    import importlib
    import inspect

    mods = ("criterion", "deim", "facility", "gradmatch", "nnls", "rect", "refine", "tournament", "volume")
    found = []
    for mod in ("build",) + mods:
        m = importlib.import_module(f"graft_array._cuda.{mod}")
        for name, fn in inspect.getmembers(m, inspect.isfunction):
            param = inspect.signature(fn).parameters.get("fmad")
            if fn.__module__ == m.__name__ and param is not None:
                assert param.default is False, f"{mod}.{name}"
                found.append(f"{mod}.{name}")
    assert len(found) >= 15 and "build.launch" in found and "deim.deim_batched" in found, found
    assert "--fmad=false" in build.nvrtc_options()


def _permuted_rows(seed, n, r, i, j):
    """A float64 batch whose column 0 is zero (step 0 takes a fill row: the largest norm) and whose rows i < j,
    the largest, hold the same entries in two orders: equal norms in exact arithmetic, which differ in the last
    bits when summed in column order. Returns (V (1, n, r), whether those two sums differ)."""
    rng = np.random.default_rng(seed)
    V = 0.01 * rng.standard_normal((1, n, r))
    a = rng.standard_normal(r)
    a[0] = 0.0
    V[0, i] = a
    V[0, j] = np.concatenate([[0.0], rng.permutation(a[1:])])
    V[0, :, 0] = 0.0

    def sq(x):
        s = 0.0
        for v in x:
            s = s + v * v
        return s

    return V, sq(V[0, i]) != sq(V[0, j])


@needs_cxx
def test_shim_fill_rows_of_near_equal_norm_are_every_backends_choice(rng):
    """Rows whose norms tie in exact arithmetic and differ in the last bits as summed: every backend sums the
    squares in column order, each product and sum rounded (no fused or reordered sum: Numba's kernels, the
    shim, NVRTC under either --fmad, the generic path), so each picks the Numba kernels' fill row. Found by a
    review: Numba's fast-math row norms (reordered, fused) picked another row than the CUDA kernels."""
    from graft_array._agnostic.maxvol import run_maxvol as generic_run_maxvol
    from graft_array._cuda import tournament as ctour
    from graft_array._cuda import volume as cvol

    differ = 0
    for seed in range(6):
        V, d = _permuted_rows(seed, 120, 13, 30, 100)
        differ += d
        want = run_maxvol(V, 3, method="deim")[0]
        assert want[0, 0] in (30, 100)
        for warp in (False, True):
            np.testing.assert_array_equal(_bounded(lambda V, kk: cdeim.emulate_deim_batched(V, kk, warp=warp),
                                                   V, 3)[0], want)
        np.testing.assert_array_equal(_bounded(cdeim.emulate_deim_tall, V, 3)[0], want)
        np.testing.assert_array_equal(generic_run_maxvol(V, 3, method="deim", xp=np, device="cpu")[0], want)
        np.testing.assert_array_equal(_bounded(ctour.emulate_tournament, V, 3, 64)[0],
                                      run_maxvol(V, 3, method="tournament", tile_rows=64)[0])
        want_vol = run_maxvol(V, 3, method="volume")[0]
        np.testing.assert_array_equal(_bounded(cvol.emulate_volume_batched, V, 3)[0], want_vol)
        np.testing.assert_array_equal(generic_run_maxvol(V, 3, method="volume", xp=np, device="cpu")[0], want_vol)
    assert differ >= 3  # the cases tell the orders apart


def _cuda_maxvol_entry_through_the_shim(monkeypatch):
    """The cuda maxvol entry on NumPy arrays, every kernel it launches run by the shim; returns the entry's module."""
    from graft_array._cuda import maxvol as cmaxvol
    from graft_array._cuda import rect as crect
    from graft_array._cuda import refine as cref
    from graft_array._cuda import tournament as ctour
    from graft_array._cuda import volume as cvol

    monkeypatch.setattr(cmaxvol, "as_cupy", lambda V: V)
    monkeypatch.setattr(cmaxvol, "like", lambda y, x: y)
    for mod, name in ((cdeim, "deim_batched"), (cdeim, "deim_tall"), (crect, "rect_extend"),
                      (cvol, "volume_batched"), (cvol, "volume_tall"), (ctour, "tournament"), (cref, "refine")):
        monkeypatch.setattr(mod, name, getattr(mod, "emulate_" + name))
    return cmaxvol


@needs_cxx
def test_shim_maxvol_rectangular_path_through_the_cuda_entry(monkeypatch, rng):
    """The cuda entry's plan (DEIM, volume or the tournament, then the extension) with the kernels run by the
    shim, and the tall DEIM (more than 1024 rows) through deim_tall.cu."""
    cmaxvol = _cuda_maxvol_entry_through_the_shim(monkeypatch)
    V = rng.standard_normal((4, 90, 12))
    for method in ("deim", "volume", "tournament"):
        for k in (6, 12, 30):
            piv, ranks, conv, iters = cmaxvol.run_maxvol(V, k, method=method, xp=np, device="cpu")
            want = run_maxvol(V, k, method=method)
            np.testing.assert_array_equal(piv, want[0])
            assert ranks == want[1].tolist() and conv == [True] * 4 and iters == [0] * 4
    T = rng.standard_normal((2, 1500, 10))
    piv, ranks, _, _ = cmaxvol.run_maxvol(T, 10, method="deim", xp=np, device="cpu")
    np.testing.assert_array_equal(piv, run_maxvol(T, 10, method="deim")[0])
    piv, ranks, _, _ = cmaxvol.run_maxvol(T, 10, method="volume", xp=np, device="cpu")
    np.testing.assert_array_equal(piv, run_maxvol(T, 10, method="volume")[0])
    for method in ("deim", "volume", "tournament"):
        got = cmaxvol.run_maxvol(V, 10, method=method, refine=True, tol=1.01, max_iters=40, xp=np, device="cpu")
        want = run_maxvol(V, 10, method=method, refine=True, tol=1.01, max_iters=40)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1:] == tuple(a.tolist() for a in want[1:])


@needs_cxx
@given(st.integers(1, 4), st.integers(1, 64), st.integers(1, 40), st.sampled_from([0.0, 1e-3, 0.5]),
       st.integers(0, 2**31))
def test_shim_nnls_weights_match_the_numba_fit(B, kk, d, reg, seed):
    from graft_array._cuda import nnls as cnnls
    from graft_array._numba.criterion import nnls_batched

    rng = np.random.default_rng(seed)
    G = rng.standard_normal((B, kk, d))
    G[0, : kk // 3] *= 1e-3  # uneven norms: some weights hit the bound
    g = rng.standard_normal((B, d)) * 3.0
    K = G @ G.transpose(0, 2, 1)
    b = np.einsum("bkd,bd->bk", G, g)
    sizes = rng.integers(1, kk + 1, B)
    got = _bounded(cnnls.emulate_nnls_weights, K, b, sizes, 128.0, reg)
    want = nnls_batched(K, b, sizes, 128.0, reg)
    # the Numba kernel's dot products are reassociated (fast-math): the same active set and the same fit up
    # to rounding, which the ill-conditioned systems (m > d, no ridge) amplify to ~1e-8 of the largest weight
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(want).max()))
    assert (got >= 0).all() and (got[np.arange(kk)[None, :] >= sizes[:, None]] == 0).all()


# --------------------------------------------------------------------------- the lockstep references


@given(st.lists(st.integers(0, 3), min_size=1, max_size=96), st.randoms(use_true_random=False))
def test_lockstep_block_argmax_is_the_first_largest(values, r):
    n = len(values)
    block = max(32, -(-n // 32) * 32)
    v = np.full(block, -1.0)
    v[:n] = values
    best, p = lockstep.block_argmax(v, np.arange(block))
    assert best == max(values) and p == values.index(max(values))


@given(st.lists(st.integers(-1, 3), min_size=1, max_size=300), st.sampled_from([32, 64, 256]))
def test_lockstep_strided_argmax_is_the_first_largest(values, threads):
    best, p = lockstep.strided_argmax(values, threads)
    live = [v for v in values if v >= 0]
    if live:
        assert best == max(values) and p == values.index(max(values))
    else:
        assert best == -1.0


@given(st.integers(1, 3), st.integers(1, 70), st.integers(1, 12), st.integers(0, 2**31),
       st.sampled_from([np.float32, np.float64]))
@example(1, 8, 10, 244, np.float32)  # found by CI: rank 7 against 8 while the kernels divided and did not fuse
def test_lockstep_deim_equals_numba_and_the_reference(B, n, r, seed, dt):
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((B, n, r)).astype(dt)
    if n > 2:
        V[0, n - 1] = V[0, 0]  # a duplicate row: a tie at the first step at least
    kk = min(r, n)
    piv, rank, bad = lockstep.deim_batched(V, kk)
    want_piv, want_rank = _numba(V, kk)
    np.testing.assert_array_equal(piv, want_piv)
    np.testing.assert_array_equal(rank, want_rank)
    assert not bad.any()
    if dt is np.float64:
        for b in range(B):
            np.testing.assert_array_equal(piv[b], reference_deim(V[b], kk)[0])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_lockstep_deim_rounds_as_numba_on_round_off_pivots(dt):
    """Rank 6 of 8 rows: the last pivots are round-off residues near the tolerance, so the rank is decided by
    the last bits. deim.cu (and its lockstep) compute U's row as pivot row x rounded 1 / pivot and update by one
    fused multiply-add, as the Numba kernels do; with a division and an unfused update, 339 of these 600 batches
    got another rank or other fill rows."""
    for seed in range(300):
        V = np.random.default_rng(seed).standard_normal((2, 8, 10)).astype(dt)
        V[:, 7] = V[:, 0]
        V[:, 6] = V[:, 1] + V[:, 2]
        piv, rank, _ = lockstep.deim_batched(V, 8)
        want_piv, want_rank = _numba(V, 8)
        np.testing.assert_array_equal(piv, want_piv)
        np.testing.assert_array_equal(rank, want_rank)


def test_lockstep_fnma_is_one_rounding():
    """lockstep.fnma is a true fused multiply-add (c - a b rounded once), where NumPy would round twice."""
    a = np.array([1.0 + 2.0**-30])
    np.testing.assert_array_equal(lockstep.fnma(a, a, np.array([1.0 + 2.0**-29])), [-(2.0**-60)])
    assert float(np.float64(1.0 + 2.0**-29) - a[0] * a[0]) == 0.0  # two roundings lose it
    x = np.float32(1 + 2.0**-12)
    assert lockstep.fnma(-x, x, np.float32(-(1 + 2.0**-11))) == np.float32(2.0**-24)


@needs_cxx
@pytest.mark.parametrize("warp", [False, True])
def test_shim_equals_lockstep(warp, rng):
    V = rng.standard_normal((3, 45, 10)).astype(np.float32)
    V[1, 20:] = V[1, :25]
    got = _bounded(lambda V, kk: cdeim.emulate_deim_batched(V, kk, warp=warp), V, 10)
    want = lockstep.deim_batched(V, 10)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_instances_cover_every_supported_shape():
    assert cdeim.instance(np.float32, 1) == "deim_batched_f32_r8"
    assert cdeim.instance(np.float64, 9) == "deim_batched_f64_r16"
    assert cdeim.instance(np.float32, 64) == "deim_batched_f32_r64"
    assert cdeim.fits(1024, 64) and not cdeim.fits(1025, 8) and not cdeim.fits(100, 65)
    names = {n for n, _ in build.KERNELS["deim.cu"]}
    for dt in (np.float32, np.float64):
        for kk in range(1, 65):
            assert cdeim.instance(dt, kk) in names


# --------------------------------------------------------------------------- on a GPU


gpu = pytest.mark.skipif(not _gpu_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("warp", [False, None])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_gpu_kernel_equals_numba(dt, warp, rng):
    import cupy

    for V, kk in _cases(rng, dt):
        piv, rank, bad = cdeim.deim_batched(cupy.asarray(V), kk, warp=warp)
        want_piv, want_rank = _numba(V, kk)
        np.testing.assert_array_equal(piv.get(), want_piv)
        np.testing.assert_array_equal(rank.get(), want_rank)
        assert not bad.get().any()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("shape", [(128, 32), (64, 32), (200, 16), (33, 8)])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_gpu_warp_kernel_equals_numba_on_mixed_batches(dt, shape, rng):
    """Thousands of batches through the warp kernel (where it has an instance): ties, rank-deficient, zero,
    band-crossing and non-finite batches among random ones; Numba's pivots and ranks, and the block kernel's."""
    import cupy

    n, r = shape
    V = rng.standard_normal((3000, n, r)).astype(dt)
    V[1::6] = np.round(V[1::6])
    V[2::6, :, r // 2:] = V[2::6, :, :r - r // 2]
    V[3::6] = 0.0
    V[4::6] *= dt(1e-30) if dt == np.float32 else 1e-300
    V[5::6, 3, 1] = np.inf
    fin = np.isfinite(V).all(axis=(1, 2))
    want_piv, want_rank = _numba(V[fin], r)
    for warp in (None, False):
        piv, rank, bad = cdeim.deim_batched(cupy.asarray(V), r, warp=warp)
        np.testing.assert_array_equal(bad.get(), ~fin)
        np.testing.assert_array_equal(piv.get()[fin], want_piv)
        np.testing.assert_array_equal(rank.get()[fin], want_rank)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_gpu_volume_equals_numba(dt, rng):
    import cupy

    from graft_array._cuda import volume as cvol

    V = rng.standard_normal((30, 256, 32)).astype(dt)
    piv, rank = cvol.volume_batched(cupy.asarray(V), 32)
    want_piv, want_rank, _, _ = run_maxvol(V, 32, method="volume")
    np.testing.assert_array_equal(piv.get(), want_piv)
    np.testing.assert_array_equal(rank.get(), want_rank)


@pytest.mark.gpu
@gpu
def test_gpu_tournament_and_tall_deim_equal_numba(rng):
    import cupy

    from graft_array._cuda import tournament as ctour

    V = rng.standard_normal((2, 200_000, 32)).astype(np.float32)
    piv, rank = ctour.tournament(cupy.asarray(V), 32, 4096)
    np.testing.assert_array_equal(piv.get(), run_maxvol(V, 32, method="tournament", tile_rows=4096)[0])
    piv, rank = ctour.tournament(cupy.asarray(V[:, :20_000]), 32, 20_000)
    want = run_maxvol(V[:, :20_000], 32, method="deim")[0]
    np.testing.assert_array_equal(piv.get(), want)
    piv, rank = cdeim.deim_tall(cupy.asarray(V[:, :20_000]), 32)
    np.testing.assert_array_equal(piv.get(), want)
    T = rng.standard_normal((3, 300_000, 24))
    T[1, :, 12:] = T[1, :, :12]  # fill rows
    piv, rank = cdeim.deim_tall(cupy.asarray(T), 24)
    want_piv, want_rank, _, _ = run_maxvol(T, 24, method="deim")
    np.testing.assert_array_equal(piv.get(), want_piv)
    np.testing.assert_array_equal(rank.get(), want_rank)


@pytest.mark.gpu
@gpu
def test_gpu_refine_equals_numba(rng):
    import cupy

    from graft_array._cuda import refine as cref

    V = rng.standard_normal((30, 256, 24))
    piv, rank, _, _ = run_maxvol(V, 24, method="deim")
    got = cupy.asarray(piv)
    conv, iters = cref.refine(cupy.asarray(V), got, cupy.asarray(rank), 1.01, 50)
    want = run_maxvol(V, 24, method="deim", refine=True, tol=1.01, max_iters=50)
    np.testing.assert_array_equal(got.get(), want[0])
    np.testing.assert_array_equal(iters.get(), want[3])


@pytest.mark.gpu
@gpu
def test_gpu_gradmatch_pursuit_equals_numba(rng):
    import cupy

    from graft_array._cuda import gradmatch as cgm
    from graft_array.strategies._batch import batch_gram_plain_nb
    from graft_array.strategies.gradmatch import gradmatch_plain_nb

    G = rng.standard_normal((20, 128, 16))
    starts = np.arange(20, dtype=np.int64) * 128
    order, w, _ = gradmatch_plain_nb(G, 32, 0.5, starts.view(np.uint64), np.uint64(3))
    parts = [batch_gram_plain_nb(G[b]) for b in range(20)]
    K, bv, gg = (cupy.asarray(np.stack([pt[i] for pt in parts])) for i in range(3))
    from array_api_compat import array_namespace

    got_order, got_w = cgm.finish(array_namespace(K), *cgm.pursuit(K, bv, gg, 32, 0.5), 32, 3, starts)
    np.testing.assert_array_equal(got_order.get(), order)
    np.testing.assert_allclose(got_w.get(), w, rtol=1e-12)


@pytest.mark.gpu
@gpu
def test_gpu_tall_volume_equals_numba(rng):
    import cupy

    from graft_array._cuda import volume as cvol

    V = rng.standard_normal((100_000, 32))
    piv, rank = cvol.volume_tall(cupy.asarray(V), 32)
    np.testing.assert_array_equal(piv.get(), run_maxvol(V[None], 32, method="volume")[0][0])


@pytest.mark.gpu
@gpu
def test_gpu_rect_extension_equals_numba(rng):
    import cupy

    from graft_array._cuda import rect as crect
    from graft_array._numba.rect import _rect_batched

    V = rng.standard_normal((30, 128, 20))
    piv, rank, _, _ = run_maxvol(V, 20, method="deim")
    got = crect.rect_extend(cupy.asarray(V), cupy.asarray(piv), cupy.asarray(rank), 50)
    np.testing.assert_array_equal(got.get(), _rect_batched(V, piv, rank, 50))


@pytest.mark.gpu
@gpu
def test_gpu_nnls_weights_match_numba(rng):
    import cupy

    from graft_array._cuda import nnls as cnnls
    from graft_array._numba.criterion import nnls_batched

    G = rng.standard_normal((40, 32, 20))
    g = rng.standard_normal((40, 20))
    K = G @ G.transpose(0, 2, 1)
    b = np.einsum("bkd,bd->bk", G, g)
    sizes = rng.integers(1, 33, 40)
    got = cnnls.nnls_weights(cupy.asarray(K), cupy.asarray(b), cupy.asarray(sizes), 128.0, 0.0)
    np.testing.assert_allclose(got.get(), nnls_batched(K, b, sizes, 128.0, 0.0), rtol=1e-8, atol=1e-10)


@pytest.mark.gpu
@gpu
def test_gpu_facility_location_equals_numba(rng):
    """facility.cu on the device (a block of 1024 threads for n = 1024, one warp for n = 7): the Numba kernel's
    order and weights, duplicates and ties included."""
    import cupy

    from graft_array._cuda import facility as cfac
    from graft_array.strategies._batch import batch_gram_plain_nb
    from graft_array.strategies.facility import facility_location_plain_nb

    for B, n, p, m in ((3, 1024, 16, 40), (2, 7, 3, 7), (2, 300, 5, 60)):
        G = rng.standard_normal((B, n, p))
        G[0, 5] = G[0, n - 1]
        G[-1, :3] = 0.0
        order, w, _ = facility_location_plain_nb(G, m, True)
        K = np.stack([batch_gram_plain_nb(G[b])[0] for b in range(B)])
        got_order, got_w = cfac.facility_location(cupy.asarray(K), m)
        np.testing.assert_array_equal(cupy.asnumpy(got_order), order)
        np.testing.assert_array_equal(cupy.asnumpy(got_w), w)


@pytest.mark.gpu
@gpu
def test_gpu_rho_curve_equals_numba(rng):
    import cupy

    from graft_array._cuda import criterion as ccrit
    from graft_array._numba.criterion import rho_curve

    K, b, gg = _gram_problem(rng, 50, 40, 30)
    rho, skipped = ccrit.rho_curve(cupy.asarray(K), cupy.asarray(b), cupy.asarray(gg))
    want_rho, want_skipped = rho_curve(K, b, gg)
    np.testing.assert_array_equal(rho.get(), want_rho)
    np.testing.assert_array_equal(skipped.get(), want_skipped)


@pytest.mark.gpu
@gpu
def test_gpu_select_and_maxvol_equal_the_numpy_path(rng):
    import cupy

    import graft_array as ga

    V = rng.standard_normal((20, 128, 16)).astype(np.float32)
    np.testing.assert_array_equal(ga.maxvol(cupy.asarray(V), 16).get(), ga.maxvol(V, 16))
    F = rng.standard_normal((8, 128, 32)).astype(np.float32)
    G = rng.standard_normal((8, 128, 10)).astype(np.float32)
    a = ga.select(F, G, fraction=0.25, random_state=0)
    b = ga.select(cupy.asarray(F), cupy.asarray(G), fraction=0.25, random_state=0)
    np.testing.assert_array_equal(cupy.asnumpy(b), a)
    torch = pytest.importorskip("torch")
    t = torch.as_tensor(V, device="cuda")
    out = ga.maxvol(t, 16)
    assert out.device.type == "cuda"
    np.testing.assert_array_equal(out.cpu().numpy(), ga.maxvol(V, 16))


def test_bench_gpu_runs_or_says_there_is_no_device(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--repeats", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr
    if _gpu_available():
        assert "batches/s" in (tmp_path / "gpu.md").read_text()
    else:
        assert "nothing to measure" in out.stdout and not (tmp_path / "gpu.md").exists()


@needs_cxx
def test_shim_facility_location_is_the_numba_one(rng):
    from graft_array._cuda import facility as cfac
    from graft_array.strategies._batch import batch_gram_plain_nb
    from graft_array.strategies.facility import facility_location_plain_nb

    for B, n, p, m in ((3, 50, 8, 10), (2, 128, 20, 32), (1, 300, 5, 60), (2, 7, 3, 7)):
        G = rng.standard_normal((B, n, p))
        G[0, 5] = G[0, n - 1]  # duplicates: distance 0 whatever the Gram's rounding
        G[-1, :3] = 0.0  # equal similarities: ties to the lowest index, to the earlier choice
        order, w, _ = facility_location_plain_nb(G, m, True)
        K = np.stack([batch_gram_plain_nb(G[b])[0] for b in range(B)])
        got_order, got_w = _bounded(cfac.emulate_facility_location, K, m)
        np.testing.assert_array_equal(got_order, order)
        np.testing.assert_array_equal(got_w, w)
        assert (got_w.sum(axis=1) == n).all()
    assert cfac.fits(1024, 1) and not cfac.fits(1025, 4) and not cfac.fits(10, 11)


@needs_cxx
@given(st.integers(1, 3), st.integers(2, 150), st.integers(1, 30), st.integers(1, 64),
       st.sampled_from([0.0, 1e-3, 0.5]), st.integers(0, 2**31))
def test_shim_gradmatch_pursuit_is_the_numba_one(B, n, p, m, lam, seed):
    from graft_array._cuda import gradmatch as cgm
    from graft_array.strategies._batch import batch_gram_plain_nb
    from graft_array.strategies.gradmatch import gradmatch_plain_nb

    m = min(m, n)
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((B, n, p))
    G[0, n - 1] = G[0, 0]  # a duplicate row
    starts = np.arange(B, dtype=np.int64) * n
    order, w, _ = gradmatch_plain_nb(G, m, lam, starts.view(np.uint64), np.uint64(seed))
    parts = [batch_gram_plain_nb(G[b]) for b in range(B)]
    K, bv, gg = (np.stack([pt[i] for pt in parts]) for i in range(3))
    act, wa, q, chosen = _bounded(cgm.emulate_pursuit, K, bv, gg, m, lam)
    got_order, got_w = cgm.finish(np, act, wa, q, chosen, m, seed, starts)
    np.testing.assert_array_equal(got_order, order)
    np.testing.assert_allclose(got_w, w, rtol=1e-12)  # the fill's mean and the normalisation sum in another order
    assert (chosen.sum(axis=1) == q).all()


@needs_cxx
@pytest.mark.parametrize("strategy", ["craig", "crest", "gradmatch"])
def test_baselines_through_the_cuda_plan_with_the_shim(strategy, monkeypatch, rng):
    import graft_array as ga
    import graft_array._select as sel
    from graft_array._cuda import criterion as ccrit
    from graft_array._cuda import facility as cfac

    F = rng.standard_normal((5, 64, 12))
    G = ga.LastLayerGrads(rng.standard_normal((5, 64, 4)), rng.standard_normal((5, 64, 9)))
    labels = rng.integers(0, 3, (5, 64))
    want = ga.select(F, G, fraction=0.25, strategy=strategy, labels=labels, random_state=0, return_info=True)
    real = sel.resolve
    monkeypatch.setattr(sel, "resolve",
                        lambda x, backend, func: "cuda" if backend == "cuda" else real(x, backend, func))
    calls = []
    monkeypatch.setattr(cfac, "facility_location_like",
                        lambda K, m: calls.append("fac") or cfac.emulate_facility_location(K, m))
    monkeypatch.setattr(ccrit, "rho_curve_like",
                        lambda K, b, gg: calls.append("rho") or ccrit.emulate_rho_curve(K, b, gg))
    from graft_array._cuda import gradmatch as cgm

    def pursuit_like(xp, K, b, gg, m, lam, seed, starts):
        calls.append("omp")
        return cgm.finish(xp, *cgm.emulate_pursuit(K, b, gg, m, lam), m, seed, starts)

    monkeypatch.setattr(cgm, "gradmatch_like", pursuit_like)
    got = _bounded(lambda: ga.select(F, G, fraction=0.25, strategy=strategy, labels=labels, random_state=0,
                                     return_info=True, backend="cuda"), timeout=300)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-12)
    assert ("omp" if strategy == "gradmatch" else "fac") in calls and "rho" in calls


def _select_cuda_plan_through_the_shim(monkeypatch, wrap):
    """Route ``select(..., backend="cuda")`` to the cuda plan with its kernels run by the shim: each of the plan's
    kernel entries (deim, rect, rho, nnls) replaced by ``wrap(name, emulating function)``."""
    import graft_array._select as sel
    from graft_array._cuda import criterion as ccrit
    from graft_array._cuda import deim as cd
    from graft_array._cuda import maxvol as cmaxvol
    from graft_array._cuda import nnls as cnnls
    from graft_array._cuda import rect as crect

    real = sel.resolve
    monkeypatch.setattr(sel, "resolve",
                        lambda x, backend, func: "cuda" if backend == "cuda" else real(x, backend, func))
    monkeypatch.setattr(cmaxvol, "as_cupy", lambda V: V)
    monkeypatch.setattr(cmaxvol, "like", lambda y, x: y)
    monkeypatch.setattr(cd, "deim_batched", wrap("deim", cd.emulate_deim_batched))
    monkeypatch.setattr(crect, "rect_extend", wrap("rect", crect.emulate_rect_extend))
    monkeypatch.setattr(ccrit, "rho_curve_like", wrap("rho", ccrit.emulate_rho_curve))
    monkeypatch.setattr(cnnls, "nnls_weights_like", wrap("nnls", cnnls.emulate_nnls_weights))


@needs_cxx
def test_maxvol_cuda_plan_finds_non_finite_input_without_a_pass_of_its_own(monkeypatch, rng):
    """Public maxvol on the cuda plan, kernels run by the shim: on the batched DEIM path the kernel's own flags
    (read back with the ranks, in the call's one transfer) replace an isfinite pass over V; the paths whose
    kernels assume finite input (volume, k > r, refine) still make that pass, and the generic fallback (k, r > 64)
    reads non-finite input off the max |V| it takes anyway. Either way a NaN or an infinity in any one batch
    gets the NumPy path's error, and finite input the NumPy path's rows."""
    import array_api_compat

    import graft_array as ga
    import graft_array._maxvol as mv

    real = mv.resolve
    monkeypatch.setattr(mv, "resolve", lambda x, backend, func: "cuda" if backend == "cuda" else real(x, backend, func))
    _cuda_maxvol_entry_through_the_shim(monkeypatch)
    xp = array_api_compat.array_namespace(np.ones(1))  # the namespace maxvol works in on NumPy input
    passes, isfinite = [], xp.isfinite
    monkeypatch.setattr(xp, "isfinite", lambda x: passes.append(x.shape) or isfinite(x))
    cases = [(dict(k=12), 0), (dict(k=12, method="volume"), 1), (dict(k=20), 1),
             (dict(k=12, refine=True, tol=1.01, max_iters=30), 1)]
    V = rng.standard_normal((5, 90, 12))
    W = rng.standard_normal((2, 90, 70))  # min(k, r) > 64: the generic code on the device
    for A, kw, n_passes in [(V, *c) for c in cases] + [(W, dict(k=70), 0)]:
        passes.clear()
        want = ga.maxvol(A, **kw)
        got = _bounded(lambda: ga.maxvol(A, backend="cuda", **kw))
        np.testing.assert_array_equal(got, want)
        assert len(passes) == n_passes, (kw, passes)
        for bad in (np.nan, np.inf, -np.inf):
            B = A.copy()
            B[-1, 7, 3] = bad
            with pytest.raises(ValueError) as want_err:
                ga.maxvol(B, **kw)
            passes.clear()
            with pytest.raises(ValueError) as got_err:
                _bounded(lambda: ga.maxvol(B, backend="cuda", **kw))
            assert str(got_err.value) == str(want_err.value) and "'V'" in str(got_err.value), got_err.value
            assert len(passes) == n_passes, (kw, bad, passes)


@needs_cxx
def test_select_through_the_cuda_plan_with_the_shim(monkeypatch, rng):
    """``select``'s cuda plan (DEIM, extension, criterion and weights kernels around the generic low rank
    and Grams) on NumPy arrays with every kernel run by the shim: the NumPy path's rows, sizes and weights."""
    import graft_array as ga

    F = rng.standard_normal((6, 100, 24))
    G = ga.LastLayerGrads(rng.standard_normal((6, 100, 5)), rng.standard_normal((6, 100, 16)))
    want = ga.select(F, G, fraction=0.3, budget="batch", random_state=0, return_info=True)
    calls = []

    def record(name, fn):
        def run(*args):
            calls.append(name)
            return fn(*args)
        return run

    _select_cuda_plan_through_the_shim(monkeypatch, record)
    got = _bounded(lambda: ga.select(F, G, fraction=0.3, budget="batch", random_state=0, return_info=True,
                                     backend="cuda"), timeout=300)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.sizes, want.sizes)
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-6)
    assert sorted(set(calls)) == ["deim", "nnls", "rect", "rho"], calls  # every kernel of the plan ran


@needs_cxx
def test_select_cuda_plan_makes_a_fixed_number_of_host_round_trips(monkeypatch, rng):
    """``select``'s cuda plan on arrays that live on a device other than the host (array_api_strict's
    "device1": an implicit conversion to NumPy raises there, as it does for CuPy), every kernel run by the shim
    on copies that are not counted: the device-to-host round trips the plan itself makes (a scalar read, a DLPack
    export, a copy to the host, cupy.asnumpy) are as many for 12 batches as for 3, a handful, and so are its
    array operations on the device (each a launch or a few on a GPU); the rows are the NumPy path's. Shows that
    outside the kernels no host synchronisation and no launch happens per batch."""
    import contextlib
    from collections import Counter

    import graft_array as ga

    xs = pytest.importorskip("array_api_strict")
    cupy = pytest.importorskip("cupy")
    dev, host_dev = xs.Device("device1"), xs.Device("CPU_DEVICE")
    A = type(xs.asarray([1.0]))
    quiet, trips = [0], Counter()

    def counting(name, orig):
        def run(self, *a, **k):
            if not quiet[0] and (name != "to_device" or (a and a[0] == host_dev and self.device != host_dev)):
                trips[name] += 1
            return orig(self, *a, **k)
        return run

    for name in ("__bool__", "__int__", "__float__", "__index__", "__dlpack__", "to_device"):
        monkeypatch.setattr(A, name, counting(name, getattr(A, name)))
    ops, depth = Counter(), [0]

    def op(name, fn):  # an operation the plan asks of the namespace (not those it makes inside itself)
        def run(*a, **k):
            if not depth[0] and not quiet[0]:
                ops[name] += 1
            depth[0] += 1
            try:
                return fn(*a, **k)
            finally:
                depth[0] -= 1
        return run

    for mod, prefix in ((xs, ""), (xs.linalg, "linalg.")):
        for name in dir(mod):
            fn = getattr(mod, name)
            if name[:1].islower() and callable(fn) and not isinstance(fn, type) and name != "to_device":
                monkeypatch.setattr(mod, name, op(prefix + name, fn))
    for name in ("__add__", "__sub__", "__mul__", "__truediv__", "__matmul__", "__getitem__", "__setitem__",
                 "__neg__", "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__and__", "__or__",
                 "__invert__", "__pow__", "__radd__", "__rsub__", "__rmul__", "__rtruediv__", "__abs__"):
        monkeypatch.setattr(A, name, op(name, getattr(A, name)))

    @contextlib.contextmanager
    def uncounted():
        quiet[0] += 1
        try:
            yield
        finally:
            quiet[0] -= 1

    def to_host(x):
        with uncounted():
            return np.asarray(x.to_device(host_dev)) if isinstance(x, A) else x

    def to_dev(y):
        if isinstance(y, tuple):
            return tuple(to_dev(v) for v in y)
        return xs.asarray(y, device=dev) if isinstance(y, np.ndarray) else y

    def on_device(fn):  # the kernel's work: inputs and outputs cross without being counted
        return lambda *args: to_dev(fn(*(to_host(a) for a in args)))

    def asnumpy(a, *args, **kw):
        trips["cupy.asnumpy"] += 1
        return to_host(a)

    _select_cuda_plan_through_the_shim(monkeypatch, lambda name, fn: on_device(fn))
    monkeypatch.setattr(cupy, "asnumpy", asnumpy)
    totals, launches = [], []
    for B in (3, 12):
        F = rng.standard_normal((B, 100, 24)).astype(np.float32)
        E, H = (rng.standard_normal((B, 100, c)).astype(np.float32) for c in (5, 16))
        want = ga.select(F, ga.LastLayerGrads(E, H), fraction=0.3, random_state=0, return_info=True)
        Fd, Ed, Hd = (xs.asarray(a, device=dev) for a in (F, E, H))
        trips.clear()
        ops.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = _bounded(lambda: ga.select(Fd, ga.LastLayerGrads(Ed, Hd), fraction=0.3, random_state=0,
                                             return_info=True, backend="cuda"), timeout=300)
        totals.append(dict(trips))
        launches.append(dict(ops))
        assert got.indices.device == dev
        np.testing.assert_array_equal(to_host(got.indices), want.indices)
        np.testing.assert_allclose(to_host(got.weights), want.weights, rtol=1e-5)
    assert totals[0] == totals[1], totals
    assert 0 < sum(totals[0].values()) <= 12, totals
    assert launches[0] == launches[1], launches
    assert 20 < sum(launches[0].values()) <= 250, launches


def test_capability_table_names_importable_entries():
    """Every routine's CPU, GPU and generic entry in graft_array._backends.ROUTINES exists (None: not yet)."""
    import importlib

    from graft_array._backends import ROUTINES

    assert {"deim", "tournament", "volume", "rect", "rho_curve", "weights"} <= set(ROUTINES)
    gpu = 0
    for routine, row in ROUTINES.items():
        assert set(row) == {"numba", "cuda", "array_api"}, routine
        assert row["numba"] and row["array_api"], routine
        for backend, target in row.items():
            if target is None:
                continue
            module, name = target.split(":")
            assert callable(getattr(importlib.import_module(module), name)), (routine, backend)
            gpu += backend == "cuda"
    assert gpu >= 6


@pytest.mark.gpu
@gpu
def test_gpu_kernels_run_without_host_synchronisation(rng, monkeypatch):
    """Every launcher captured into a CUDA graph: a capture fails on any host synchronisation (a device-to-host
    copy or a stream sync raises during capture). The replayed graph gives the direct calls' results, and the
    number of kernel launches does not depend on the number of batches."""
    import cupy

    from graft_array._cuda import criterion as ccrit
    from graft_array._cuda import nnls as cnnls
    from graft_array._cuda import rect as crect
    from graft_array._cuda import refine as cref
    from graft_array._cuda import tournament as ctour
    from graft_array._cuda import volume as cvol

    launches = []
    real = build.function

    def counted(*a, **k):
        fn = real(*a, **k)
        return lambda *args, **kw: (launches.append(a[1]), fn(*args, **kw))[1]

    monkeypatch.setattr(build, "function", counted)
    counts = []
    for B in (3, 300):
        V = cupy.asarray(rng.standard_normal((B, 128, 16)).astype(np.float32))
        K, b, gg = (cupy.asarray(a) for a in _gram_problem(rng, B, 16, 20))
        sizes = cupy.full(B, 16, dtype=cupy.int64)

        def work():
            piv, rank, _ = cdeim.deim_batched(V, 16)
            ref = piv.copy()
            cref.refine(V, ref, rank, 1.01, 20)
            return (piv, ref, crect.rect_extend(V, piv, rank, 40), cvol.volume_batched(V, 16)[0],
                    cdeim.deim_tall(V, 16)[0],
                    ctour.tournament(V, 16, 64)[0], ccrit.rho_curve(K, b, gg)[0],
                    cnnls.nnls_weights(K, b, sizes, 128.0, 0.0))

        launches.clear()
        direct = work()  # compiles, and fills CuPy's memory pool
        cupy.cuda.Device().synchronize()
        counts.append(len(launches))
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            captured = work()
            graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        for got, want in zip(captured, direct):
            np.testing.assert_array_equal(got.get(), want.get())
    assert counts[0] == counts[1] >= 7 + 33


@pytest.mark.gpu
@gpu
def test_gpu_torch_tensors_in_and_out_on_torch_stream(rng):
    torch = pytest.importorskip("torch")
    import graft_array as ga

    V = rng.standard_normal((20, 128, 16)).astype(np.float32)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        t = torch.as_tensor(V, device="cuda") * 1.0  # produced on s: the kernels must run after it, on s
        out = ga.maxvol(t, 24)
    s.synchronize()
    assert out.device.type == "cuda" and out.dtype == torch.int64
    np.testing.assert_array_equal(out.cpu().numpy(), ga.maxvol(V, 24))


def test_gpu_session_script_parses_and_runs_its_steps():
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_session.sh"
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    for step in ("gpu_warm.py", "check-gpu --compile-only", "check-gpu >", "-m gpu", "bench_gpu.py --quick",
                 "bench_gpu.py --repeats", "bench_maxvol.py --only batched", "ncu --clock-control none",
                 "gpu_profile.py"):
        assert step in text


def test_bench_gpu_select_stages_times_every_stage_and_restores_them(monkeypatch, rng):
    """bench_gpu's stage breakdown of select, run here on the generic path with CUDA events faked by the host
    clock: every stage of the plan is found and timed, the wrapped entries are put back, select still works."""
    import importlib
    import time
    import types
    from pathlib import Path

    cupy = pytest.importorskip("cupy")

    class Event:
        def record(self):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    monkeypatch.setattr(cupy.cuda, "Event", Event)
    monkeypatch.setattr(cupy.cuda, "get_elapsed_time", lambda a, b: (b.t - a.t) * 1e3)
    monkeypatch.setattr(cupy.cuda, "get_current_stream", lambda: types.SimpleNamespace(synchronize=lambda: None))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        bench = importlib.import_module("bench_gpu")
        before = {(mod, attr): getattr(importlib.import_module(mod), attr) for _, mod, attr in bench.STAGES}
        F = rng.standard_normal((6, 40, 12)).astype(np.float32)
        G = rng.standard_normal((6, 40, 5)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = bench.select_stages(F, G, 2, backend="array_api")
    finally:
        sys.modules.pop("bench_gpu", None)
    labels = [r[0] for r in rows]
    assert labels == ["max |F| and |G| per batch", "low rank (Grams, Cholesky QR, eigh)", "maxvol (DEIM kernel)",
                      "criterion Grams", "rho(m) curves", "the whole call (stages wrapped)"]  # no NNLS kernel here
    assert all(wall > 0 and dev > 0 for _, wall, dev in rows)
    assert sum(r[1] for r in rows[:-1]) <= rows[-1][1]
    assert all(getattr(importlib.import_module(mod), attr) is fn for (mod, attr), fn in before.items())
