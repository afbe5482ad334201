"""Array namespaces, devices and zero-copy hand-over between frameworks.

Type tests go through :mod:`array_api_compat`, which looks in ``sys.modules``:
nothing here imports torch or cupy. A tensor is only ever converted when the
caller already passed one, so its framework is already loaded.
"""

import numpy as np
import array_api_compat as aac

__all__ = [
    "array_namespace",
    "describe",
    "device_of",
    "is_array",
    "is_torch_array",
    "to_numpy_view",
    "from_numpy_like",
]


def is_array(x):
    """True for anything with an array-API namespace (NumPy, torch, CuPy, array-api-strict, ...)."""
    return aac.is_array_api_obj(x)


def is_torch_array(x):
    """True for a torch tensor (without importing torch)."""
    return aac.is_torch_array(x)


def array_namespace(*arrays):
    """The (array-API compatible) namespace shared by ``arrays``."""
    return aac.array_namespace(*arrays)


def device_of(x):
    """The device of ``x`` as the array API reports it."""
    return aac.device(x)


def _device_str(x):
    try:
        return str(aac.device(x))
    except Exception:  # pragma: no cover - exotic array types
        return "unknown"


def describe(x):
    """``"shape (3, 4), dtype float32, device cpu"``: what error messages say about an array."""
    if not is_array(x):
        return f"an object of type {type(x).__module__}.{type(x).__qualname__}"
    return f"shape {tuple(x.shape)}, dtype {x.dtype}, device {_device_str(x)}"


def is_torch_cpu(x):
    return aac.is_torch_array(x) and x.device.type == "cpu"


def is_cuda_array(x):
    if aac.is_cupy_array(x):
        return True
    return aac.is_torch_array(x) and x.device.type == "cuda"


def to_numpy_view(x):
    """A NumPy view of a NumPy array or a CPU torch tensor (no copy where possible).

    torch tensors are detached first and go through DLPack; half precision is
    upcast to float32 (NumPy has no bfloat16), which is a copy.
    """
    if isinstance(x, np.ndarray):
        return x
    if aac.is_torch_array(x):
        import torch  # already loaded: the caller passed a tensor

        t = x.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(torch.float32)
        if t.is_conj():
            t = t.resolve_conj()
        return np.from_dlpack(t)
    raise TypeError(f"cannot view {describe(x)} as a NumPy array")  # pragma: no cover


def from_numpy_like(result, like):
    """Return the NumPy array ``result`` in the namespace and on the device of ``like``."""
    if isinstance(like, np.ndarray):
        return result
    if aac.is_torch_array(like):
        import torch

        return torch.from_numpy(np.ascontiguousarray(result)).to(like.device)
    raise TypeError(f"cannot convert a result to the type of {describe(like)}")  # pragma: no cover
