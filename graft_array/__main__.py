"""``python -m graft_array``: the ``graft-array`` command (see :mod:`graft_array.cli`)."""

from .cli import main

raise SystemExit(main())
