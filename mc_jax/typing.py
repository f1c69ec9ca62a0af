"""jaxtyping aliases and the dimension glossary used in every docstring.

Notation:
    b   batch                      t   sequence length (tokens)
    h   heads                      dk  key / query head dim
    dv  value head dim             d   head dim of a deep memory (dk == dv)
    f   hidden width of a deep memory (expansion * d)
    r   independent runs of a memory (batch x segments, flattened)
    n   chunks or segments         c   tokens in one chunk / segment
    m   cache slots (segments for constant segmentation, levels for log)
"""

from typing import Any

from jaxtyping import Array, Bool, Float, Int

PyTree = Any

__all__ = ["Array", "Bool", "Float", "Int", "PyTree"]
