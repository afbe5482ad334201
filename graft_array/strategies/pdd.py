"""``strategy="pdd"``: the selector inside PDD (progressive dataset distillation).

PDD distils in stages, each stage conditioned on the images of the earlier ones,
and leaves the examples that are already easy (learned early, low forgetting
score) out of the later stages. That choice of real data for the next stage is a
selection: the rows of largest ``scores`` (pass each example's forgetting count,
or any hardness score), per class with ``labels``
(:mod:`graft_array.strategies._scores`). The synthesis of each stage (matching
training trajectories) trains images and is out of this library's scope.
"""

from ._scores import run

__all__ = ["run"]
