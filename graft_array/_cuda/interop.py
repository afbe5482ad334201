"""CuPy views of the caller's device arrays and back (DLPack, zero-copy), and the stream to launch on."""

import contextlib
import warnings


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


@contextlib.contextmanager
def on_stream_of(x):
    """A context in which CuPy launches on ``x``'s device and on the stream the caller's work is ordered on.

    For a CUDA torch tensor: its device, and torch's current stream there (as
    a CuPy stream), so that the kernels run after the work that produced ``x``
    and before what torch does next with the results. For a CuPy array: its
    device, and CuPy's own current stream. Anything else: nothing changes.
    """
    kind = type(x).__module__.split(".")[0]
    if kind == "cupy":
        with x.device:
            yield
        return
    if not (kind == "torch" and x.device.type == "cuda"):
        yield
        return
    import cupy
    import torch

    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    ts = torch.cuda.current_stream(x.device)
    with cupy.cuda.Device(dev):
        try:  # CuPy >= 14: the CUDA stream protocol
            stream = cupy.cuda.Stream.from_external(ts)
        except (AttributeError, TypeError):  # older CuPy, or a torch stream without __cuda_stream__
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                stream = cupy.cuda.ExternalStream(ts.cuda_stream, dev)
        with stream:
            yield
