"""A tiny PNG writer (numpy + zlib, no new dependency) and a labelled heatmap drawn with a 3x5 pixel font.

``heatmap_png`` uses matplotlib when it is installed; otherwise it draws the cells, their values (percent) and the
row/column labels itself.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np

# 3x5 bitmap glyphs (rows top to bottom, 3 bits each, MSB left).
_FONT = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2), "%": (5, 1, 2, 4, 5), "-": (0, 0, 7, 0, 0), " ": (0, 0, 0, 0, 0), "k": (4, 5, 6, 5, 5),
    "L": (4, 4, 4, 4, 7), "D": (6, 5, 5, 5, 6), "=": (0, 7, 0, 7, 0), ":": (0, 2, 0, 2, 0),
}


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write ``image`` (``uint8 [H, W, 3]`` RGB or ``[H, W]`` gray) as an 8-bit PNG."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8; got {img.dtype}")
    if img.ndim == 2:
        color_type, img = 0, img[:, :, None]
    elif img.ndim == 3 and img.shape[2] == 3:
        color_type = 2
    else:
        raise ValueError(f"image must be [H, W] or [H, W, 3]; got shape {img.shape}")
    h, w, c = img.shape
    if h < 1 or w < 1:
        raise ValueError(f"image is empty: {img.shape}")
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def read_png_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` from a PNG header (for tests)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def _colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (dark red -> yellow -> green), NaN -> gray."""
    stops = np.array([[165, 0, 38], [244, 109, 67], [254, 224, 139], [166, 217, 106], [26, 152, 80]], float)
    x = np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0) * (len(stops) - 1)
    lo = np.floor(x).astype(int).clip(0, len(stops) - 2)
    t = (x - lo)[..., None]
    rgb = stops[lo] * (1 - t) + stops[lo + 1] * t
    rgb[np.isnan(v)] = 160
    return rgb.astype(np.uint8)


def _draw_text(img: np.ndarray, text: str, x: int, y: int, scale: int, color=(0, 0, 0)) -> None:
    for i, ch in enumerate(text):
        glyph = _FONT.get(ch, _FONT[" "])
        for r, bits in enumerate(glyph):
            for cidx in range(3):
                if bits >> (2 - cidx) & 1:
                    y0, x0 = y + r * scale, x + (i * 4 + cidx) * scale
                    img[y0:y0 + scale, x0:x0 + scale] = color


def _text_width(text: str, scale: int) -> int:
    return (len(text) * 4 - 1) * scale


def heatmap_image(values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                  cell: int = 48, scale: int = 2) -> np.ndarray:
    """RGB image of ``values`` (``[rows, cols]`` in [0, 1]) with percentages in the cells and the labels."""
    v = np.asarray(values, float)
    rows, cols = v.shape
    margin_l = max([_text_width(s, scale) for s in row_labels] + [0]) + 3 * scale
    margin_t = 5 * scale + 3 * scale
    img = np.full((margin_t + rows * cell + 1, margin_l + cols * cell + 1, 3), 255, np.uint8)
    colors = _colormap(v)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = margin_t + r * cell, margin_l + c * cell
            img[y0:y0 + cell, x0:x0 + cell] = colors[r, c]
            img[y0, x0:x0 + cell] = img[y0:y0 + cell, x0] = 255
            text = "-" if np.isnan(v[r, c]) else f"{100 * v[r, c]:.0f}"
            tw = _text_width(text, scale)
            _draw_text(img, text, x0 + (cell - tw) // 2, y0 + (cell - 5 * scale) // 2, scale)
        _draw_text(img, str(row_labels[r]), scale, margin_t + r * cell + (cell - 5 * scale) // 2, scale)
    for c in range(cols):
        text = str(col_labels[c])
        _draw_text(img, text, margin_l + c * cell + (cell - _text_width(text, scale)) // 2, scale, scale)
    return img


def heatmap_png(path: str | os.PathLike[str], values: np.ndarray, row_labels: Sequence[str],
                col_labels: Sequence[str], *, title: str = "", xlabel: str = "", ylabel: str = "") -> str:
    """Write a heatmap PNG; returns ``"matplotlib"`` or ``"builtin"`` (the renderer used)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        write_png(path, heatmap_image(values, row_labels, col_labels))
        return "builtin"
    v = np.asarray(values, float)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * v.shape[1], 1 + 0.6 * v.shape[0]))
    ax.imshow(v, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(v.shape[1]), col_labels)
    ax.set_yticks(range(v.shape[0]), row_labels)
    for (r, c), x in np.ndenumerate(v):
        ax.text(c, r, "-" if np.isnan(x) else f"{100 * x:.0f}", ha="center", va="center")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


__all__ = ["heatmap_image", "heatmap_png", "read_png_size", "write_png"]
