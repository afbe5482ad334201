"""Every argument check and every error message of the public API, in one place.

Messages follow scikit-learn's form: "The 'k' parameter of maxvol must be an int
in the range [1, 100]. Got 0 instead." Array messages name the argument, what
was expected and what came (shape, dtype, device).
"""

import numbers

from ._namespace import array_namespace, describe, is_array

__all__ = [
    "check_array",
    "check_bool",
    "check_int",
    "check_option",
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


def check_array(x, name, func, *, ndims, shape_doc, min_rows=1, min_cols=1):
    """Check that ``x`` is a non-empty real floating array with ``x.ndim`` in ``ndims``.

    Returns its namespace. Finiteness is checked by the backend (it can do so in
    the pass it makes anyway).
    """
    if not is_array(x):
        raise TypeError(
            f"{func} expects '{name}' to be an array (NumPy, PyTorch, CuPy or any array-API array) "
            f"of shape {shape_doc}; got {describe(x)}. Convert lists with numpy.asarray first."
        )
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
    n, r = x.shape[-2], x.shape[-1]
    if n < min_rows or r < min_cols or any(s == 0 for s in x.shape[:-2]):
        raise ValueError(
            f"{func} expects '{name}' with at least {min_rows} row(s) and {min_cols} column(s) "
            f"per batch; got {describe(x)}."
        )
    return xp


def nonfinite_error(name, func, x):
    return ValueError(f"{func} expects '{name}' to contain only finite values; got NaN or infinity in {describe(x)}.")
