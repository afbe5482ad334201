"""CuPy views of the caller's device arrays and back (DLPack, zero-copy), and the stream to launch on."""

import contextlib


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


def on_stream_of(x):
    """A context in which CuPy launches on the stream the caller's work is ordered on.

    For a CUDA torch tensor: torch's current stream on the tensor's device (as
    an external CuPy stream), so that the kernels run after the work that
    produced ``x`` and before what torch does next with the results. For a
    CuPy array: CuPy's own current stream (nothing changes).
    """
    if not (type(x).__module__.split(".")[0] == "torch" and x.device.type == "cuda"):
        return contextlib.nullcontext()
    import cupy
    import torch

    stream = torch.cuda.current_stream(x.device)
    return cupy.cuda.ExternalStream(stream.cuda_stream, x.device.index)
