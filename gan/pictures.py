"""Every picture the project draws: image grids, labelled rows of images (contact sheets, photo / peer / model
comparisons, a search's samples), and score curves. Low in the house: it knows pixels and numbers, no models, no
training, no jobs.

Images come in as (N, 3, H, W) float tensors in [-1, 1] or (H, W, 3) uint8 arrays; pictures go out as PNG bytes.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from gan.io.images import to_pixels

LABEL_WIDTH = 150
LABEL_HEIGHT = 18


def png(img: Image.Image, colours: int | None = None) -> bytes:
    """PNG bytes; `colours` quantises to a palette first (a picture committed to the docs stays small)."""
    if colours:
        img = img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    """(N, 3, H, W) in [-1, 1] -> PNG bytes of a grid with `nrow` images per row, 2 px white between them."""
    # imported here: torchvision costs every process that imports it ~2.5 s (it loads torch._dynamo), and only
    # the processes that draw a grid need it (see tests/test_front_door.py, the import test)
    from torchvision.utils import make_grid
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)  # (3, H', W')
    return png(Image.fromarray(to_pixels(grid)))


def labelled_rows(rows: Sequence[tuple[str, Sequence[np.ndarray]]], size: int | None = None,
                  label_width: int = LABEL_WIDTH, colours: int | None = None) -> bytes:
    """One row per (label, images): the label on the left, then the row's (H, W, 3) uint8 images, each resized to
    `size` px when given. Rows may differ in length; a PNG."""
    tiles = [[Image.fromarray(np.asarray(img, np.uint8)) for img in images] for _, images in rows]
    if size:
        tiles = [[t.resize((size, size), Image.LANCZOS) for t in row] for row in tiles]
    cell_w = max((t.width for row in tiles for t in row), default=size or 64)
    cell_h = max((t.height for row in tiles for t in row), default=size or 64)
    per_row = max((len(row) for row in tiles), default=1)
    sheet = Image.new("RGB", (label_width + per_row * (cell_w + 2), len(rows) * (cell_h + 2) or cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, ((label, _), row) in enumerate(zip(rows, tiles)):
        y = r * (cell_h + 2)
        for line, text in enumerate(label.split("\n")):
            draw.text((4, y + 4 + 14 * line), text, fill="black")
        for c, tile in enumerate(row):
            sheet.paste(tile, (label_width + c * (cell_w + 2), y))
    return png(sheet, colours)


def stacked(pictures: Sequence[tuple[str, bytes]]) -> bytes:
    """PNG pictures one above the other, each under its label line (a search's best samples per trial)."""
    rows = [(label, Image.open(io.BytesIO(data)).convert("RGB")) for label, data in pictures]
    width = max((img.width for _, img in rows), default=320)
    sheet = Image.new("RGB", (width, sum(img.height + LABEL_HEIGHT for _, img in rows) or 40), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for label, img in rows:
        draw.text((4, y + 3), label, fill="black")
        sheet.paste(img, (0, y + LABEL_HEIGHT))
        y += img.height + LABEL_HEIGHT
    return png(sheet)


def score_curves(series: dict[str, Sequence[tuple[float, float]]], title: str, ylabel: str,
                 reference: tuple[str, float] | None = None, mark_best: bool = False,
                 size: tuple[float, float] = (6.4, 3.6)) -> bytes:
    """Score per epoch, one labelled line per series (a legend when named), lower is better; `reference` a
    horizontal line (label, value), e.g. what the unstylized photos score; `mark_best` marks the lowest point.
    Drawn with matplotlib on its Agg canvas (no display, no pyplot state shared between threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: ~0.5 s, only where drawn
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label or None)
    if reference is not None:
        ax.axhline(reference[1], color="grey", linestyle="--", linewidth=1, label=f"{reference[0]} ({reference[1]:.2f})")
    points = [p for s in series.values() for p in s]
    if mark_best and points:
        bx, by = min(points, key=lambda p: p[1])
        ax.plot([bx], [by], marker="o", markersize=8, color="tab:red", fillstyle="none")
        ax.annotate(f"best {by:.2f} @ epoch {bx:g}", (bx, by), textcoords="offset points", xytext=(6, 8),
                    color="tab:red", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if any(series) or reference is not None:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
