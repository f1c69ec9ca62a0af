"""What the command lines (``mc-train`` / ``train.py``, ``mc-eval`` / ``eval.py``) share: argument parsing with
``key=value`` overrides anywhere on the line, positive-number argument types, quiet library logs.

    parser = argparse.ArgumentParser(...); add_overrides(parser)
    args = parse_args(parser, argv)          # train.py train.steps=30 --no-progress train.seed=1
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """The ``key=value ...`` positional (dotted config overrides)."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse with options and positionals (the overrides) in any order: ``a=1 --flag b=2`` works."""
    return parser.parse_intermixed_args(argv)


def _number(kind: type, text: str, *, zero_ok: bool) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}, got {text!r}") from None
    if math.isnan(value) or value < 0 or (value == 0 and not zero_ok):
        raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero_ok else '> 0'}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int > 0 (a zero or negative count is an error, never "use the default")."""
    return _number(int, text, zero_ok=False)


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _number(int, text, zero_ok=True)


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = _number(float, text, zero_ok=True)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def quiet_logs() -> None:
    """Silence absl/orbax INFO/WARNING chatter on the console (errors still show)."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover
        pass


__all__ = ["add_overrides", "non_negative_float", "non_negative_int", "parse_args", "positive_int", "quiet_logs"]
