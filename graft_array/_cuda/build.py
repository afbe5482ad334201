"""The CUDA sources: their kernel instances, NVRTC compilation, the CPU shim, the runtime module.

Every kernel lives in a ``.cu`` file of this package (one per algorithm) and is
exported under a C name per instance (dtype, template values), so that the same
name serves NVRTC, ``cupy.RawModule`` and the CPU shim. Three ways to build:

* :func:`compile_nvrtc`: NVRTC to a cubin for an architecture (``sm_80``,
  ``sm_90``), no GPU needed (``cupy.cuda.nvrtc`` from the ``[gpu]`` extra). The
  compile test and ``graft-array check-gpu --compile-only`` use it.
* :func:`emulator`: the same sources compiled by the system C++ compiler (C++20)
  with ``shim.h`` into a shared library called through ctypes (every block's
  threads as ``std::thread``), for the tests and ``check-gpu --emulate``.
* :func:`function`: a ``cupy.RawKernel`` of an instance on the current device.
"""

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

#: source file -> its kernel instances: (C name, argument C types for the shim's entry)
_DEIM_ARGS = ("const {T}*", "int", "int", "int", "double", "long long*", "long long*", "int*")
DEIM_RANKS = (8, 16, 32, 64)
#: the warp kernel's instances: (dtype suffix, R) -> its Q values (rows per lane), Q R <= 128 registers of data
DEIM_WARP = {("f32", 8): (1, 2, 4, 8), ("f32", 16): (1, 2, 4, 8), ("f32", 32): (1, 2, 4),
             ("f64", 8): (1, 2, 4, 8), ("f64", 16): (1, 2, 4), ("f64", 32): (1, 2)}
_C_TYPE = {"f32": "float", "f64": "double"}
_DEIM_TALL_ARGS = (
    ("init", ("const {T}*", "long long", "int", "int", "const double*", "{T}*", "double*", "unsigned char*")),
    ("scan", ("long long", "int", "int", "{T}*", "const {T}*", "const double*", "const unsigned char*", "const int*",
              "double*", "int*", "double*", "int*")),
    ("commit", ("long long", "int", "int", "int", "double", "const double*", "const {T}*", "{T}*", "unsigned char*",
                "int*", "const double*", "const int*", "const double*", "const int*", "int", "long long*")),
)
_WARP_INSTANCES = [(f"deim_warp_{suf}_r{R}_q{Q}", suf, R, Q) for (suf, R), qs in DEIM_WARP.items() for Q in qs]
_DEIM_WARP_ARGS = ("const {T}*", "int", "int", "int", "int", "double", "long long*", "long long*", "int*")
RHO_SIZES = (32, 64)
RECT_RANKS = (16, 64)  # also greedy volume's
_TILE_ARGS = ("const {T}*", "int", "int", "int", "const long long*", "int", "int", "const double*", "double", "{T}*",
              "double*", "unsigned char*", "long long*", "int", "long long*")
_REFINE_ARGS = ("const {T}*", "long long*", "const long long*", "int", "int", "int", "double", "int", "double",
                "double*", "unsigned char*", "long long*")
_VOLUME_TALL_ARGS = (
    ("init", ("const {T}*", "long long", "int", "const double*", "double*", "double*", "double*", "unsigned char*")),
    ("scan", ("const {T}*", "long long", "int", "const double*", "const double*", "const int*", "double*", "double*",
              "const double*", "const unsigned char*", "double*", "int*", "double*", "int*")),
    ("commit", ("const {T}*", "long long", "int", "int", "double", "const double*", "double*", "int*",
                "unsigned char*", "const double*", "const int*", "const double*", "const int*", "int", "int",
                "long long*")),
)
_VOLUME_ARGS = ("const {T}*", "int", "int", "int", "double", "long long*", "long long*")
_NNLS_ARGS = ("const double*", "const double*", "const long long*", "int", "double", "double", "double*")
_RECT_ARGS = ("const {T}*", "const long long*", "const long long*", "int", "int", "int", "long long*", "double*")
_RHO_ARGS = ("const double*", "const double*", "const double*", "int", "double", "double*", "unsigned char*")
KERNELS = {
    "deim.cu": [(f"deim_batched_{suf}_r{R}", tuple(a.format(T=T) for a in _DEIM_ARGS))
                for suf, T in (("f32", "float"), ("f64", "double")) for R in DEIM_RANKS],
    "deim_warp.cu": [(name, tuple(a.format(T=_C_TYPE[suf]) for a in _DEIM_WARP_ARGS))
                     for name, suf, _, _ in _WARP_INSTANCES],
    "deim_tall.cu": [(f"deim_tall_{part}_{suf}", tuple(a.format(T=_C_TYPE[suf]) for a in args))
                     for suf in ("f32", "f64") for part, args in _DEIM_TALL_ARGS],
    "criterion.cu": [(f"rho_curve_k{K}", _RHO_ARGS) for K in RHO_SIZES],
    "facility.cu": [("facility_location", ("const double*", "int", "int", "double*", "long long*", "double*"))],
    "gradmatch.cu": [("gradmatch_pursuit", ("const double*", "const double*", "const double*", "int", "int",
                                            "double", "long long*", "double*", "long long*", "unsigned char*"))],
    "nnls.cu": [(f"nnls_weights_k{K}", _NNLS_ARGS) for K in RHO_SIZES],
    "tournament.cu": [(f"deim_tiles_{suf}", tuple(a.format(T=T) for a in _TILE_ARGS))
                      for suf, T in (("f32", "float"), ("f64", "double"))],
    "volume.cu": [(f"volume_batched_{suf}_r{R}", tuple(a.format(T=T) for a in _VOLUME_ARGS))
                  for suf, T in (("f32", "float"), ("f64", "double")) for R in RECT_RANKS]
                 + [(f"volume_tall_{part}_{suf}", tuple(a.format(T=T) for a in args))
                    for suf, T in (("f32", "float"), ("f64", "double")) for part, args in _VOLUME_TALL_ARGS],
    "refine.cu": [(f"refine_{suf}", tuple(a.format(T=T) for a in _REFINE_ARGS))
                  for suf, T in (("f32", "float"), ("f64", "double"))],
    "rect.cu": [(f"rect_extend_{suf}_r{R}", tuple(a.format(T=T) for a in _RECT_ARGS))
                for suf, T in (("f32", "float"), ("f64", "double")) for R in RECT_RANKS],
}
ARCHS = ("sm_80", "sm_90")


def suffix(dtype):
    """The instances' dtype suffix: "f32" or "f64"."""
    import numpy as np

    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]


def sized(prefix, sizes, k, dtype=None):
    """The instance of the smallest template size >= k: ``prefix[_f32|_f64]_<letter><size>``; prefix ends with
    the size's letter, e.g. ``sized("rho_curve_k", RHO_SIZES, 40) == "rho_curve_k64"``,
    ``sized("deim_batched_r", DEIM_RANKS, 9, float32) == "deim_batched_f32_r16"``."""
    size = next(s for s in sizes if s >= k)
    if dtype is None:
        return f"{prefix}{size}"
    head, letter = prefix[:-2], prefix[-1]
    return f"{head}_{suffix(dtype)}_{letter}{size}"


def source(name):
    """The text of a source file of this package (``deim.cu``, ``common.cuh``, ``shim.h``)."""
    with open(os.path.join(HERE, name)) as fh:
        return fh.read()


def _inline_includes(text):
    """``#include "x"`` of this package's headers replaced by their text (NVRTC sees one string)."""
    def sub(m):
        return _inline_includes(source(m.group(1)).replace("#pragma once", ""))
    return re.sub(r'^#include "([^"]+)"\s*$', sub, text, flags=re.M)


#: sources whose instances are generated here (one macro line each), not written in the file: a launch
#: compiles only the instance it runs (all of deim_warp.cu's take about a minute of NVRTC)
GENERATED = {
    "deim_warp.cu": {name: f"GRAFT_DEIM_WARP_INSTANCE({_C_TYPE[suf]}, {suf}, {R}, {Q})"
                     for name, suf, R, Q in _WARP_INSTANCES},
}


def instance_lines(name, only=None):
    """The generated instance lines of source ``name`` (every instance, or the one named ``only``)."""
    lines = GENERATED.get(name, {})
    return "".join(line + "\n" for k, line in lines.items() if only is None or k == only)


def full_source(name, only=None):
    """Source ``name`` with its headers inlined and its generated instances (all, or the one ``only``)."""
    return _inline_includes(source(name)) + instance_lines(name, only)


def nvrtc_options(arch="sm_90", *, fmad=False, verbose=True):
    """NVRTC's options. ``--fmad=false`` by default, in production as in every parity check: a multiply and an add
    are fused only where the source says so (``fma``, ``fnma`` and ``add_square`` in common.cuh). Where a kernel
    does the Numba kernel's operations in its order (the DEIM family, the fill and first-residual row norms, the
    rho curve: see each source's header) its results are the Numba path's bits. Greedy volume's dot products are
    summed in another order by Numba's vectorised loops, so on near-ties its later pivots can differ. The DEIM
    kernels' inner loops are explicit fused multiply-adds either way (the same number of ``fma.rn`` in their PTX
    with and without the flag); in greedy volume, the extension, refine, the rho curve and the weights
    ``--fmad=true`` would fuse hundreds of operations."""
    opts = [f"--gpu-architecture={arch}", "--std=c++17"]
    if not fmad:
        opts.append("--fmad=false")
    if verbose:
        opts.append("-Xptxas=-v")
    return opts


def compile_nvrtc(name, arch="sm_90", *, fmad=False, code=None):
    """NVRTC-compile source ``name`` (or the text ``code`` under that name) for ``arch``: ``(cubin bytes,
    compiler log)``.

    Raises RuntimeError with the log when the source does not compile.
    """
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(full_source(name) if code is None else code, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, nvrtc_options(arch, fmad=fmad))
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC could not compile {name} for {arch}:\n{nvrtc.getProgramLog(prog)}") from e
        return nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def resources(log):
    """``{kernel: dict(registers=, smem=, spill_stores=, spill_loads=)}`` from ptxas's verbose log."""
    out, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = out.setdefault(m.group(1), dict(registers=None, smem=0, spill_stores=0, spill_loads=0))
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["spill_stores"], cur["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
    return out


# --------------------------------------------------------------------------- the CPU shim


def _entry_source():
    """One C++ translation unit: the shim, every .cu file, and an ``emulate_<kernel>`` launcher each."""
    parts = ['#include "shim.h"']
    for name, kernels in KERNELS.items():
        parts.append(f'#include "{name}"')
        parts.append(instance_lines(name))
        for kname, args in kernels:
            params = ", ".join(f"{a} a{i}" for i, a in enumerate(args))
            names = ", ".join(f"a{i}" for i in range(len(args)))
            parts.append(f'extern "C" void emulate_{kname}(unsigned gx, unsigned gy, unsigned block, {params}) '
                         f"{{ graft_shim::launch(gx, gy, block, {kname}, {names}); }}")
    return "\n".join(parts) + "\n"


def compiler():
    """The C++ compiler for the shim (``$CXX``, else g++ or clang++), or None."""
    for cxx in (os.environ.get("CXX"), "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return shutil.which(cxx)
    return None


@functools.lru_cache(maxsize=None)
def emulator():
    """The shim library (ctypes.CDLL), built once per process in a temporary directory.

    Raises RuntimeError when no C++20 compiler is found or the build fails.
    """
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("the CUDA emulation needs a C++20 compiler (g++ >= 11 or clang++); none found "
                           "(set CXX).")
    src = _entry_source()
    key = hashlib.sha256((src + "".join(source(n) for n in (*KERNELS, "common.cuh", "elim.cuh", "shim.h"))).encode())
    out_dir = tempfile.mkdtemp(prefix="graft_array_shim_")
    lib = os.path.join(out_dir, f"shim_{key.hexdigest()[:16]}.so")
    cpp = os.path.join(out_dir, "entry.cpp")
    with open(cpp, "w") as fh:
        fh.write(src)
    cmd = [cxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-x", "c++", f"-I{HERE}",
           cpp, "-o", lib]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"the CUDA shim did not build ({' '.join(cmd)}):\n{res.stderr}")
    return ctypes.CDLL(lib)


_C_TYPES = {"int": ctypes.c_int, "double": ctypes.c_double, "long long": ctypes.c_longlong}
_POINTEE = {"float": "float32", "double": "float64", "int": "int32", "long long": "int64", "unsigned char": "uint8"}


def _checked(kernel, args, array_type):
    """``(source, parameter types)`` of instance ``kernel`` (from :data:`KERNELS`), once ``args`` fit them: as
    many, and each pointer a C-contiguous ``array_type`` (``numpy.ndarray`` for the shim, ``cupy.ndarray`` for the
    GPU) of the pointee's type. TypeError otherwise: a wrong buffer would not fail on the GPU, it would compute
    garbage."""
    src, types = next((src, a) for src, kernels in KERNELS.items() for name, a in kernels if name == kernel)
    if len(args) != len(types):
        raise TypeError(f"{kernel} takes {len(types)} arguments; got {len(args)}")
    for i, (t, a) in enumerate(zip(types, args)):
        if t.endswith("*"):
            want = _POINTEE[t.removeprefix("const ").removesuffix("*")]
            if not (isinstance(a, array_type) and a.flags.c_contiguous and a.dtype == want):
                got = f"{type(a).__name__} of {a.dtype}" if hasattr(a, "dtype") else type(a).__name__
                strided = isinstance(a, array_type) and not a.flags.c_contiguous
                raise TypeError(f"{kernel}: argument {i} ({t}) must be a C-contiguous {array_type.__module__}."
                                f"{array_type.__name__} of {want}; got {got}{' (strided)' if strided else ''}")
    return src, types


def emulate(kernel, grid, block, *args):
    """Launch kernel instance ``kernel`` through the CPU shim: ``grid`` blocks (an int or (gx, gy)) of ``block``
    threads (a multiple of 32). NumPy arrays go by pointer (they must be C-contiguous and of the kernel's
    element type: :func:`_checked`), numbers as the kernel's C parameter types (from :data:`KERNELS`)."""
    import numpy as np

    _, types = _checked(kernel, args, np.ndarray)
    conv = [a.ctypes.data_as(ctypes.c_void_p) if t.endswith("*") else _C_TYPES[t](a) for t, a in zip(types, args)]
    gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
    getattr(emulator(), "emulate_" + kernel)(ctypes.c_uint(gx), ctypes.c_uint(gy), ctypes.c_uint(block), *conv)


# --------------------------------------------------------------------------- the GPU


def module_options(fmad=False):
    """NVRTC's options for a ``cupy.RawModule`` (CuPy adds the device's architecture)."""
    return tuple(o for o in nvrtc_options(verbose=False, fmad=fmad) if not o.startswith("--gpu-architecture"))


@functools.lru_cache(maxsize=None)
def _module(name, fmad, only):
    import cupy

    return cupy.RawModule(code=full_source(name, only), options=module_options(fmad))


def function(name, kernel, *, fmad=False):
    """The ``cupy.RawKernel`` of instance ``kernel`` of source ``name`` (compiled once, cached by CuPy): the
    whole source, or, for a source with generated instances, the source with that one instance."""
    return _module(name, fmad, kernel if name in GENERATED else None).get_function(kernel)


def abs_max(xp, V):
    """Each batch's max |entry| of V (B, n, r) as float64 (B,) (0 for an empty batch): max(max V_b, -min V_b),
    two reductions that stream V, with no temporary of V's size (as ``abs(V).max()`` would make: on a tall
    matrix of 1e8 x 64 float32, 25.6 GB), in CuPy or NumPy alike."""
    B = V.shape[0]
    if V.size == 0:
        return xp.zeros(B, dtype=xp.float64)
    flat = V.reshape(B, -1)
    return xp.maximum(flat.max(axis=1), -flat.min(axis=1)).astype(xp.float64)


def grid_blocks(n, threads, max_blocks):
    """Blocks of a grid-stride pass over n rows: one row per thread where that fits, at most ``max_blocks``."""
    return max(1, min(max_blocks, -(-n // threads)))


_NP_TYPES = {"int": "int32", "long long": "int64", "double": "float64"}


def launch(kernel, grid, block, *args, fmad=False):
    """:func:`emulate`'s twin on the GPU: kernel instance ``kernel`` on ``grid`` blocks (an int or (gx, gy)) of
    ``block`` threads, CuPy arrays by pointer (checked as :func:`emulate`'s) and numbers as the kernel's C parameter
    types (from :data:`KERNELS`), on CuPy's current stream."""
    import cupy
    import numpy as np

    src, types = _checked(kernel, args, cupy.ndarray)
    conv = tuple(a if t.endswith("*") else np.dtype(_NP_TYPES[t]).type(a) for t, a in zip(types, args))
    function(src, kernel, fmad=fmad)(grid if isinstance(grid, tuple) else (grid,), (block,), conv)
