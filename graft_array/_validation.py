"""Every argument check and every error message of the public API, in one place.

Messages follow scikit-learn's form: "The 'k' parameter of maxvol must be an int
in the range [1, 100]. Got 0 instead." Array messages name the argument, what
was expected and what came (shape, dtype, device).
"""

import numbers

import numpy as np

from ._namespace import array_namespace, describe, is_array, is_torch_array

__all__ = [
    "as_kernel_dtype",
    "check_array",
    "check_bool",
    "check_int",
    "check_option",
    "check_random_state",
    "check_real",
]


def _got(value):
    return f"Got {value!r} instead."


def check_int(value, name, func, *, low, high=None, allow_none=False):
    """An integer (not a bool) in ``[low, high]``; ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        value = int(value)
        ok = value >= low and (high is None or value <= high)
    if not ok:
        rng = f"in the range [{low}, {high}]" if high is not None else f">= {low}"
        none = " or None" if allow_none else ""
        raise (ValueError if isinstance(value, numbers.Integral) and not isinstance(value, bool) else TypeError)(
            f"The '{name}' parameter of {func} must be an int {rng}{none}. {_got(value)}"
        )
    return value


def check_real(value, name, func, *, low=None, high=None, low_inclusive=True):
    """A finite real number (not a bool) with the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"The '{name}' parameter of {func} must be a float. {_got(value)}")
    value = float(value)
    bad = value != value or value in (float("inf"), float("-inf"))
    if low is not None:
        bad = bad or (value < low if low_inclusive else value <= low)
    if high is not None:
        bad = bad or value > high
    if bad:
        op = ">=" if low_inclusive else ">"
        bound = f" {op} {low}" if low is not None else ""
        bound += f" and <= {high}" if high is not None else ""
        raise ValueError(f"The '{name}' parameter of {func} must be a finite float{bound}. {_got(value)}")
    return value


def check_bool(value, name, func):
    if not isinstance(value, bool):
        raise TypeError(f"The '{name}' parameter of {func} must be a bool. {_got(value)}")
    return value


def check_option(value, name, func, options):
    if not isinstance(value, str) or value not in options:
        opts = ", ".join(repr(o) for o in options)
        raise ValueError(f"The '{name}' parameter of {func} must be one of {opts}. {_got(value)}")
    return value


def generator_at(bit_generator_type, state):
    """A new ``numpy.random.Generator`` whose next draws are those of a generator whose state was ``state``.

    The adapters that cut one pass into many select calls give each call one, so that every call draws the
    seed one select call over all the batches would.
    """
    g = np.random.Generator(bit_generator_type())
    g.bit_generator.state = state
    return g


def check_random_state(value, name, func, *, legacy=False):
    """A numpy Generator from None, a non-negative int or a Generator (``legacy``: also a numpy
    RandomState, scikit-learn's convention, whose state advances by one draw). No global RNG."""
    if isinstance(value, np.random.Generator):
        return value
    if legacy and isinstance(value, np.random.RandomState):
        return np.random.default_rng(int(value.randint(np.iinfo(np.int32).max)))
    kinds = "None, a non-negative int, a numpy RandomState or a numpy Generator" if legacy else (
        "None, a non-negative int or a numpy Generator")
    if value is None:
        return np.random.default_rng()
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"The '{name}' parameter of {func} must be {kinds}. {_got(value)}")
    if int(value) < 0:
        raise ValueError(f"The '{name}' parameter of {func} must be {kinds}. {_got(value)}")
    return np.random.default_rng(int(value))


def _check_kind(x, name, func, shape_doc):
    """Refuse the arrays that pass the array-API test but carry no plain dense data."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{func} expects '{name}' to be a plain array of shape {shape_doc}; got a numpy masked array "
            f"({describe(x)}), whose mask would be ignored. Pass numpy.ma.getdata({name}) or "
            f"{name}.filled(value){', or the padding as select(mask=...)' if func == 'select' else ''}."
        )
    if is_torch_array(x):
        if str(x.layout) != "torch.strided":
            raise TypeError(
                f"{func} expects '{name}' to be a dense tensor of shape {shape_doc}; got a {x.layout} tensor "
                f"({describe(x)}). Pass {name}.to_dense()."
            )
        if x.is_meta:
            raise ValueError(
                f"{func} expects '{name}' with data; got a tensor on the 'meta' device ({describe(x)}), which "
                "has a shape but no values. Pass a tensor on the CPU or a GPU."
            )


def check_array(x, name, func, *, ndims, shape_doc, min_rows=1, min_cols=1):
    """Check that ``x`` is a non-empty real floating array with ``x.ndim`` in ``ndims``.

    Returns its namespace. Finiteness is checked by the backend (it can do so in
    the pass it makes anyway). NumPy masked arrays, sparse and meta tensors and
    extended precision (longdouble) are refused; see :func:`as_kernel_dtype`
    for what the kernels then get.
    """
    if not is_array(x):
        raise TypeError(
            f"{func} expects '{name}' to be an array (NumPy, PyTorch, CuPy or any array-API array) "
            f"of shape {shape_doc}; got {describe(x)}. Convert lists with numpy.asarray first."
        )
    _check_kind(x, name, func, shape_doc)
    xp = array_namespace(x)
    if x.ndim not in ndims:
        raise ValueError(
            f"{func} expects '{name}' of shape {shape_doc} ({' or '.join(f'{d}-D' for d in ndims)}); "
            f"got {describe(x)}."
        )
    if not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(
            f"{func} expects '{name}' with a real floating dtype (float32 or float64); got {describe(x)}."
        )
    if isinstance(x, np.ndarray) and x.dtype.itemsize > 8:
        raise ValueError(
            f"{func} expects '{name}' with dtype float16, float32 or float64; got {describe(x)}. Extended "
            f"precision is not supported (and is not narrowed silently): cast with {name}.astype(numpy.float64)."
        )
    n, r = x.shape[-2], x.shape[-1]
    if n < min_rows or r < min_cols or any(s == 0 for s in x.shape[:-2]):
        raise ValueError(
            f"{func} expects '{name}' with at least {min_rows} row(s) and {min_cols} column(s) "
            f"per batch; got {describe(x)}."
        )
    return xp


def as_kernel_dtype(x, name, func):
    """``x`` as the kernels take it: native float32 or float64, dense, detached; a copy only when needed.

    The rule (called right after :func:`check_array`): native float32 / float64
    arrays are returned as they are (no cost); half precision (NumPy / torch
    float16, torch bfloat16) is upcast to float32; a NumPy array in non-native
    byte order becomes a native copy of the same values; a torch tensor that
    requires grad is detached. The caller's array is never modified.
    Extended precision is refused by :func:`check_array`.
    """
    if isinstance(x, np.ndarray):
        dt = x.dtype
        if dt == np.float64 or dt == np.float32:  # native: the ordinary case
            return x
        if dt.kind != "f" or dt.itemsize > 8:  # pragma: no cover - check_array refuses these
            raise ValueError(f"{func} expects '{name}' with dtype float32 or float64; got {describe(x)}.")
        return x.astype(np.float64 if dt.itemsize == 8 else np.float32)
    if is_torch_array(x):
        if x.requires_grad:
            x = x.detach()
        if x.dtype.itemsize < 4 and x.dtype.is_floating_point:
            import torch  # already loaded: the caller passed a tensor

            x = x.to(torch.float32)
        return x
    xp = array_namespace(x)
    if x.dtype == getattr(xp, "float16", None):
        x = xp.astype(x, xp.float32)
    return x


def nonfinite_error(name, func, x):
    return ValueError(f"{func} expects '{name}' to contain only finite values; got NaN or infinity in {describe(x)}.")
