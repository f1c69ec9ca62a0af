"""Preset for the subprocess tests (``train.py --preset <this file>``): the tiny test config."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import TINY as CONFIG  # noqa: E402,F401
