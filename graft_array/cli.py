"""The ``graft-array`` command (also ``python -m graft_array``).

* ``graft-array demo [options]`` (the default when no command is given): the
  training comparison of :mod:`graft_array.demo`.
* ``graft-array example [options]``: the selectors on synthetic data, no
  training (:mod:`graft_array.example`; needs no torch).
"""

import sys

USAGE = """usage: graft-array [demo|example] [options]
       graft-array --version

  demo      train a small model with full data, GRAFT, Random, CRAIG and GradMatch; table + plot (default)
  example   maxvol and select on synthetic data, no training

'graft-array demo --help' and 'graft-array example --help' list the options."""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv and argv[0] == "--version":
        from . import __version__

        print(f"graft-array {__version__}")
        return 0
    if argv and argv[0] == "example":
        from .example import main as example_main

        return example_main(argv[1:])
    prog = "graft-array"  # the demo is the default command: its messages name what the user typed
    if argv and argv[0] == "demo":
        argv = argv[1:]
        prog = "graft-array demo"
    elif argv and not argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        print(f"graft-array: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    from .demo import main as demo_main

    return demo_main(argv, prog=prog)
