import sys

from mc_jax.experiments.suite import main

if __name__ == "__main__":
    sys.exit(main())
