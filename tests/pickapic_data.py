"""Pick-a-Pic-format files and small images drawn in code (no binary test assets)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw


def drawn_image(seed: int, size: int = 32, fmt: str = "PNG") -> bytes:
    """A small image that differs for every seed, encoded as PNG or JPEG bytes."""
    im = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    draw = ImageDraw.Draw(im)
    x = seed % (size - 8)
    draw.rectangle([x, 2, x + 6, 8 + seed % 7], fill=(255 - (seed * 7) % 256, 20, 200))
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=90) if fmt == "JPEG" else im.save(buf, format=fmt)
    return buf.getvalue()


def pickapic_rows(n: int, *, ties_every: int = 4) -> dict[str, list]:
    """Columns of a Pick-a-Pic-format table with ``n`` rows; every ``ties_every``-th row is a tie."""
    cols: dict[str, list] = {k: [] for k in (
        "caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid", "image_1_uid",
        "model_0", "model_1", "user_id", "ranking_id")}
    for i in range(n):
        tie = i % ties_every == 0
        first_wins = i % 2 == 0
        cols["caption"].append(f"caption number {i % max(1, n // 2)}")
        cols["jpg_0"].append(drawn_image(2 * i, fmt="JPEG" if i % 3 == 0 else "PNG"))
        cols["jpg_1"].append(drawn_image(2 * i + 1))
        cols["label_0"].append(0.5 if tie else (1.0 if first_wins else 0.0))
        cols["label_1"].append(0.5 if tie else (0.0 if first_wins else 1.0))
        cols["image_0_uid"].append(f"uid-{2 * i}")
        cols["image_1_uid"].append(f"uid-{2 * i + 1}")
        cols["model_0"].append("model-x")
        cols["model_1"].append("model-y")
        cols["user_id"].append(i % 3)
        cols["ranking_id"].append(1000 + i)
    return cols


def write_parquet(path: Path, cols: dict[str, list]) -> Path:
    pq.write_table(pa.table(cols), path)
    return path
