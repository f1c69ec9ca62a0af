"""Train a model (see ``mc_jax/train/cli.py`` or ``python train.py --help``)."""

import sys

from mc_jax.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
