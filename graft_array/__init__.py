"""graft_array: GRAFT (Gradient-Aware Fast MaxVol) data subset selection on any array.

Importing this package loads NumPy and array-api-compat only; Numba, torch and
CuPy are loaded when a call needs them.
"""

from ._backends import which_backend
from ._exceptions import BackendUnavailableError, ConvergenceWarning, GradientRankWarning, RankDeficiencyWarning
from ._maxvol import maxvol
from ._select import LastLayerGrads, Selection, select

__version__ = "0.1.0.dev0"

__all__ = [
    "maxvol",
    "select",
    "Selection",
    "LastLayerGrads",
    "ColmState",
    "cross_covariance_error",
    "which_backend",
    "GradientRankWarning",
    "BackendUnavailableError",
    "ConvergenceWarning",
    "RankDeficiencyWarning",
    "__version__",
]


def __getattr__(name):  # the family's helpers load their strategy module (and Numba) on first use only
    if name == "ColmState":
        from .strategies.colm import ColmState

        return ColmState
    if name == "cross_covariance_error":
        from .strategies.clipcov import cross_covariance_error

        return cross_covariance_error
    raise AttributeError(f"module 'graft_array' has no attribute {name!r}")
