"""CuPy views of the caller's device arrays and back: DLPack, zero-copy, on the same device."""


def as_cupy(x):
    """A CuPy array for a CuPy array (itself) or a CUDA torch tensor (a DLPack view)."""
    import cupy

    if isinstance(x, cupy.ndarray):
        return x
    return cupy.from_dlpack(x.detach() if hasattr(x, "detach") else x)


def like(y, x):
    """The CuPy result ``y`` as the caller's kind: a torch tensor (DLPack view) when ``x`` is one."""
    import cupy

    if isinstance(x, cupy.ndarray):
        return y
    import torch

    return torch.from_dlpack(y)
