"""The library's exception and warning classes."""

__all__ = ["BackendUnavailableError", "RankDeficiencyWarning", "ConvergenceWarning", "GradientRankWarning"]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run on the given input or machine."""


class RankDeficiencyWarning(UserWarning):
    """The input's numerical rank is below the budget; some rows were chosen by the fill rule."""


class ConvergenceWarning(UserWarning):
    """An iterative refinement stopped at ``max_iters`` before meeting its tolerance."""


class GradientRankWarning(UserWarning):
    """The per-sample gradients span too few dimensions for the size criterion to mean anything."""
