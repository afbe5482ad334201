"""The ``graft-array`` command (also ``python -m graft_array``).

* ``graft-array demo [options]`` (the default when no command is given): the
  training comparison of :mod:`graft_array.demo`.
* ``graft-array example [options]``: the selectors on synthetic data, no
  training (:mod:`graft_array.example`; needs no torch).
* ``graft-array check-gpu [--compile-only] [--arch sm_90] [--emulate]``: the
  CUDA kernels compiled by NVRTC (a line per kernel: registers, shared
  memory), run through the CPU shim, or run on a GPU against the Numba path
  (:mod:`graft_array._cuda.check`; needs the ``[gpu]`` extra).
"""

import sys

USAGE = """usage: graft-array [demo|example|check-gpu] [options]
       graft-array --version

  demo      train a small model with full data, GRAFT, Random, CRAIG and GradMatch; table + plot (default)
  example   maxvol and select on synthetic data, no training
  check-gpu compile the CUDA kernels (--compile-only), emulate them on the CPU (--emulate), or check them on a GPU

'graft-array demo --help', 'graft-array example --help' and 'graft-array check-gpu --help' list the options."""


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
    if argv and argv[0] == "check-gpu":
        from ._cuda.check import main as check_main

        return check_main(argv[1:])
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
