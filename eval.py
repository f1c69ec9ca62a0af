"""Evaluate a checkpoint written by train.py (see ``mc_jax/eval/cli.py`` or ``python eval.py --help``)."""

import sys

from mc_jax.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
