"""``strategy="mkdt"``: the selector inside MKDT (dataset distillation via knowledge distillation, for SSL).

MKDT initialises its synthetic set from the real examples of highest
distillation loss (the student's loss against the teacher's representations),
then synthesises. Only that choice is a selection and lives here: the rows of
largest ``scores`` (pass each example's distillation loss), per class with
``labels`` (:mod:`graft_array.strategies._scores`). The synthesis itself
(trajectory matching on the distillation loss) trains images, not a subset: it
needs the training loop and the teacher, and is out of this library's scope.
"""

from ._scores import run

__all__ = ["run"]
