"""Writing generated images: one PNG per sample, or a grid, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 with pixels = round(255 * x)."""
    return images.float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_png(pixels: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(pixels, mode="RGB").save(tmp, format="PNG")
    os.replace(tmp, path)


def save_images(images: Tensor, out_dir: str | os.PathLike) -> list[Path]:
    """DIR/000.png, DIR/001.png, ... in batch order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, px in enumerate(to_uint8(images)):
        p = out / f"{i:03d}.png"
        save_png(px, p)
        paths.append(p)
    return paths


def grid(images: Tensor, columns: int, pad: int = 2) -> np.ndarray:
    """Tile (B, 3, H, W) into one (rows * H, columns * W, 3) uint8 image with white padding."""
    px = to_uint8(images)
    b, h, w, _ = px.shape
    rows = (b + columns - 1) // columns
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, columns)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = px[i]
    return out
