"""Preset for the subprocess tests (``train.py --preset <this file>``): the tiny test config.

``train.py`` runs from the repository root, so the test helpers import as a package.
"""

from tests.helpers.train_helpers import TINY as CONFIG  # noqa: F401
