"""Which implementation runs for which array: the capability table and ``resolve``.

One small table maps each routine to its native kernels per backend; anything
without a native kernel uses the generic array-API code on the array's own
device. Resolution looks at the array's type and device only (cached), never
imports torch or cupy, and never moves data between devices on its own.

=============================  ===========  ==================================
input                          ``auto``     what runs
=============================  ===========  ==================================
NumPy array                    numba        Numba kernels on the array itself
torch CPU tensor               numba        DLPack view -> Numba -> torch
CuPy array / torch CUDA        cuda         CuPy RawKernels where written (the
                                            batched DEIM), else array-API code
                                            on the device
any other array-API array      array_api    array-API code in its namespace
=============================  ===========  ==================================
"""

import functools
import importlib

import array_api_compat as aac

from . import _threading
from ._exceptions import BackendUnavailableError
from ._namespace import describe

__all__ = ["BACKENDS", "KERNELS", "ROUTINES", "which_backend", "resolve", "kernel"]

BACKENDS = ("auto", "numba", "array_api", "cuda")

# routine -> backend -> "module:function". Backends missing from a row use the
# row's "array_api" entry on the array's device.
KERNELS = {
    "maxvol": {
        "numba": "graft_array._numba.maxvol:run_maxvol",
        "cuda": "graft_array._cuda.maxvol:run_maxvol",
        "array_api": "graft_array._agnostic.maxvol:run_maxvol",
    },
}

#: The capability table: each routine's CPU (Numba), GPU (CUDA kernel) and generic (array API) entry, as
#: "module:function" (None: no entry of that kind yet; the routine then runs its generic entry on the
#: device). ``maxvol`` above dispatches to these; ``select`` calls the criterion, weights and baselines
#: entries of its backend.
ROUTINES = {
    "deim": {
        "numba": "graft_array._numba.deim:_deim_batched",
        "cuda": "graft_array._cuda.deim:deim_batched",
        "array_api": "graft_array._agnostic.maxvol:_deim",
    },
    "deim_interleaved": {  # run_maxvol's batched DEIM for k <= 32: SIMD lanes across batches (same pivots)
        "numba": "graft_array._numba.compact:_deim_compact",
        "cuda": "graft_array._cuda.deim:deim_batched",
        "array_api": "graft_array._agnostic.maxvol:_deim",
    },
    "tall_deim": {
        "numba": "graft_array._numba.deim:_deim_rowpar",
        "cuda": "graft_array._cuda.deim:deim_tall",
        "array_api": "graft_array._agnostic.maxvol:_deim",
    },
    "tournament": {
        "numba": "graft_array._numba.tournament:_tournament_batched",
        "cuda": "graft_array._cuda.tournament:tournament",
        "array_api": "graft_array._agnostic.maxvol:_tournament",
    },
    "tall_volume": {
        "numba": "graft_array._numba.volume:_volume_rowpar",
        "cuda": "graft_array._cuda.volume:volume_tall",
        "array_api": "graft_array._agnostic.maxvol:_volume",
    },
    "volume": {
        "numba": "graft_array._numba.volume:_volume_batched",
        "cuda": "graft_array._cuda.volume:volume_batched",
        "array_api": "graft_array._agnostic.maxvol:_volume",
    },
    "rect": {
        "numba": "graft_array._numba.rect:_rect_batched",
        "cuda": "graft_array._cuda.rect:rect_extend",
        "array_api": "graft_array._agnostic.maxvol:_rect",
    },
    "refine": {
        "numba": "graft_array._numba.rect:_refine_batched",
        "cuda": "graft_array._cuda.refine:refine",
        "array_api": "graft_array._agnostic.maxvol:_refine",
    },
    "lowrank": {  # the GPU's is the generic one: stacked GEMMs (cuBLAS) and eigh on the stack
        "numba": "graft_array._numba.lowrank:gram_ritz",
        "cuda": None,
        "array_api": "graft_array._agnostic.lowrank:lowrank",
    },
    "rho_curve": {
        "numba": "graft_array._numba.criterion:rho_curve",
        "cuda": "graft_array._cuda.criterion:rho_curve",
        "array_api": "graft_array._agnostic.criterion:rho_curve",
    },
    "weights": {
        "numba": "graft_array._numba.criterion:nnls_batched",
        "cuda": "graft_array._cuda.nnls:nnls_weights",
        "array_api": "graft_array._agnostic.criterion:nnls_gram",
    },
    "facility_location": {
        "numba": "graft_array.strategies.facility:facility_location_plain_nb",
        "cuda": "graft_array._cuda.facility:facility_location",
        "array_api": "graft_array.strategies.facility:facility_location",
    },
    "omp": {
        "numba": "graft_array.strategies.gradmatch:gradmatch_plain_nb",
        "cuda": "graft_array._cuda.gradmatch:pursuit",
        "array_api": "graft_array.strategies.gradmatch:gradmatch",
    },
    # the family (issue 13): Numba kernels on the CPU; on a GPU their generic twins, vectorised over the stack
    # (AdaCore and CoLM reach the facility-location kernel above through facility.on_grams)
    "adacore_precondition": {
        "numba": "graft_array.strategies.adacore:precondition_plain_nb",
        "cuda": None,
        "array_api": "graft_array.strategies.adacore:precondition",
    },
    "sas": {
        "numba": "graft_array.strategies.sas:sas_nb",
        "cuda": None,
        "array_api": "graft_array.strategies.sas:sas",
    },
    "clipcov": {
        "numba": "graft_array.strategies.clipcov:clipcov_nb",
        "cuda": None,
        "array_api": "graft_array.strategies.clipcov:clipcov",
    },
}


def _kind(x):
    """(kind, device type) of an array, e.g. ("numpy", "cpu"), ("torch", "cuda")."""
    if aac.is_numpy_array(x):
        return "numpy", "cpu"
    if aac.is_torch_array(x):
        return "torch", x.device.type
    if aac.is_cupy_array(x):
        return "cupy", "cuda"
    return type(x).__module__.split(".")[0], "other"


@functools.lru_cache(maxsize=None)
def _auto(kind, device_type):
    if kind == "numpy" or (kind == "torch" and device_type == "cpu"):
        return "numba"
    if kind == "cupy" or (kind == "torch" and device_type == "cuda"):
        return "cuda"
    return "array_api"


@functools.lru_cache(maxsize=None)
def _numba_available():
    try:
        importlib.import_module("numba")
    except ImportError:
        return False
    _threading.prefer_tbb()  # before Numba starts its threading layer: a fork-safe one where we can
    return True


def which_backend(x):
    """The backend that ``backend="auto"`` runs for the array ``x``.

    One of ``"numba"`` (NumPy arrays and CPU torch tensors), ``"cuda"`` (CuPy
    arrays and CUDA tensors; for now the array-API code on the device) and
    ``"array_api"`` (any other array-API namespace). In a ``fork()`` child of a
    process that had run Numba's GNU OpenMP threading layer, where Numba would
    terminate the child, NumPy arrays and CPU tensors get ``"array_api"``.
    """
    if not aac.is_array_api_obj(x):
        raise TypeError(f"which_backend expects an array; got {describe(x)}.")
    name = _auto(*_kind(x))
    if name == "numba" and not _numba_available():  # pragma: no cover - numba is a core dependency
        return "array_api"
    if name == "numba" and _threading.forked_from_openmp():  # Numba would SIGTERM this fork child
        return "array_api"
    return name


def resolve(x, backend, func):
    """The backend that runs ``func`` on ``x``; raise if an explicit request cannot run."""
    if backend not in BACKENDS:
        opts = ", ".join(repr(b) for b in BACKENDS)
        raise ValueError(f"The 'backend' parameter of {func} must be one of {opts}. Got {backend!r} instead.")
    if backend == "auto":
        return which_backend(x)
    kind, dev = _kind(x)
    if backend == "numba":
        if not (kind == "numpy" or (kind == "torch" and dev == "cpu")):
            raise BackendUnavailableError(
                f"backend='numba' runs on NumPy arrays and CPU torch tensors only; got {describe(x)}. "
                "Move the data to the host yourself, or use backend='auto'."
            )
        if not _numba_available():  # pragma: no cover
            raise BackendUnavailableError("backend='numba' needs the numba package, which is not installed.")
        if _threading.forked_from_openmp():
            raise BackendUnavailableError(
                "backend='numba' cannot run in this process: it was fork()ed from a process that had already "
                "run Numba's GNU OpenMP threading layer, and Numba terminates such a child at its first parallel "
                "kernel. Use backend='auto' (the array-API code runs here), install tbb, start workers with "
                "'spawn' or 'forkserver', or set NUMBA_THREADING_LAYER=tbb or workqueue."
            )
    if backend == "cuda" and not (kind == "cupy" or (kind == "torch" and dev == "cuda")):
        raise BackendUnavailableError(
            f"backend='cuda' runs on CuPy arrays and CUDA torch tensors only; got {describe(x)}."
        )
    return backend


@functools.lru_cache(maxsize=None)
def kernel(routine, backend):
    """The function implementing ``routine`` on ``backend`` (imported on first use)."""
    row = KERNELS[routine]
    target = row.get(backend, row["array_api"])
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
