"""Writing generated images: one PNG per sample, or a grid, written atomically."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from varrt.runtime.outputs import write_files


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 with pixels = round(255 * x)."""
    return images.float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> the bytes of a PNG file (what ``save_images`` writes)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def save_images(images: Tensor, out_dir: str | os.PathLike) -> list[Path]:
    """DIR/000.png, DIR/001.png, ... in batch order, all or none (temporary names, then renamed)."""
    out = Path(out_dir)

    def writer(px: np.ndarray) -> Callable[[Path], None]:
        return lambda tmp: Image.fromarray(px, mode="RGB").save(tmp, format="PNG")

    return write_files([(out / f"{i:03d}.png", writer(px)) for i, px in enumerate(to_uint8(images))])


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
