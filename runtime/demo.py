"""The bundled demo model (trained by tools/train.py on colour emoji) and its grid.

It is the default model of every command, so a newcomer's first run makes a real picture without
downloading anything: class i is the i-th training emoji (``demo.json`` names them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from varrt.runtime.images import to_uint8


@dataclass(frozen=True)
class DemoModel:
    var: Path
    vqvae: Path
    classes: tuple[str, ...]
    sampling: dict  # cfg, top_k, top_p the figures were measured at
    metrics: dict


def demo_model() -> DemoModel:
    root = Path(str(resources.files("varrt.runtime").joinpath("data/demo")))
    meta_path = root / "demo.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"the bundled demo model is missing ({root}); reinstall varrt, or pass --checkpoint and --vae"
        )
    meta = json.loads(meta_path.read_text())
    return DemoModel(
        root / "var.safetensors",
        root / "vqvae.safetensors",
        tuple(meta["classes"]),
        meta["sampling"],
        meta.get("metrics", {}),
    )


def labelled_grid(
    images: Tensor, labels: list[int], names: tuple[str, ...], columns: int, scale: int = 2, pad: int = 4
) -> Image.Image:
    """Rows of samples with the class name at the left of each row; images up-scaled ``scale`` x."""
    px = to_uint8(images)
    b, h, w, _ = px.shape
    h, w = h * scale, w * scale
    rows = (b + columns - 1) // columns
    font = ImageFont.load_default(size=max(10, h // 6))
    label_w = max(int(font.getlength(n.replace("_", " "))) for n in names) + 3 * pad
    canvas = Image.new("RGB", (label_w + columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(b):
        r, c = divmod(i, columns)
        tile = Image.fromarray(np.ascontiguousarray(px[i])).resize((w, h), Image.NEAREST)
        canvas.paste(tile, (label_w + pad + c * (w + pad), pad + r * (h + pad)))
        if c == 0:
            draw.text(
                (pad, pad + r * (h + pad) + h // 2),
                names[labels[i]].replace("_", " "),
                fill="black",
                font=font,
                anchor="lm",
            )
    return canvas
