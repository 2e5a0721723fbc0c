"""The demo model's training pictures: colour emoji rendered with Pillow from Debian's Noto font.

Class = emoji. Each render is the emoji on a white square, mildly augmented (size, position and a
small rotation, all continuous), so no two renders are alike and held-out renders are new pictures
of known classes. Nothing is downloaded or committed: the glyphs come from the system package
``fonts-noto-color-emoji`` (``apt-get install fonts-noto-color-emoji``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
#: the only size the font's colour bitmaps come in
FONT_SIZE = 109

#: training classes (class id = index): (name, code point), chosen to be told apart at a glance
EMOJI = (
    ("apple", 0x1F34E),
    ("banana", 0x1F34C),
    ("watermelon", 0x1F349),
    ("strawberry", 0x1F353),
    ("grapes", 0x1F347),
    ("carrot", 0x1F955),
    ("mushroom", 0x1F344),
    ("sunflower", 0x1F33B),
    ("cactus", 0x1F335),
    ("fir_tree", 0x1F332),
    ("maple_leaf", 0x1F341),
    ("dog", 0x1F436),
    ("cat", 0x1F431),
    ("frog", 0x1F438),
    ("pig", 0x1F437),
    ("panda", 0x1F43C),
    ("fox", 0x1F98A),
    ("penguin", 0x1F427),
    ("octopus", 0x1F419),
    ("turtle", 0x1F422),
    ("butterfly", 0x1F98B),
    ("ladybug", 0x1F41E),
    ("star", 0x2B50),
    ("moon", 0x1F319),
    ("fire", 0x1F525),
    ("car", 0x1F697),
    ("rocket", 0x1F680),
    ("football", 0x26BD),
    ("house", 0x1F3E0),
    ("pizza", 0x1F355),
    ("ghost", 0x1F47B),
    ("rainbow", 0x1F308),
)
#: emoji never trained on: the reconstruction figure on unseen pictures
UNSEEN = (("whale", 0x1F433), ("elephant", 0x1F418), ("cherries", 0x1F352), ("bicycle", 0x1F6B2))


@dataclass(frozen=True)
class Augment:
    """Ranges of the mild augmentation (uniform): the emoji's side as a share of the image side,
    the offset of its centre in pixels of the output image, the rotation in degrees."""

    size: tuple[float, float] = (0.78, 0.94)
    shift: float = 3.0
    rotate: float = 6.0


def font_path() -> Path:
    if not FONT.exists():
        raise SystemExit(
            f"the colour emoji font is missing ({FONT}): apt-get install fonts-noto-color-emoji (Debian/Ubuntu)"
        )
    return FONT


def font_sha256() -> str:
    return hashlib.sha256(font_path().read_bytes()).hexdigest()


def glyph(code: int, font: ImageFont.FreeTypeFont) -> Image.Image:
    """One emoji on white, cropped to its bounding box and centred on a square (RGB)."""
    im = Image.new("RGBA", (2 * FONT_SIZE, 2 * FONT_SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((FONT_SIZE // 2, FONT_SIZE // 2), chr(code), font=font, embedded_color=True)
    box = im.getbbox()
    if box is None:
        raise SystemExit(f"the emoji font has no glyph for U+{code:04X}")
    im = im.crop(box)
    side = max(im.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
    return square.convert("RGB")


class EmojiRenders:
    """Random renders of a fixed list of emoji at ``size`` px (drawn at 2x, then reduced)."""

    def __init__(self, emoji: tuple[tuple[str, int], ...], size: int, augment: Augment = Augment()) -> None:
        font = ImageFont.truetype(str(font_path()), FONT_SIZE)
        self.names = tuple(name for name, _ in emoji)
        self.glyphs = [glyph(code, font) for _, code in emoji]
        self.size, self.augment = size, augment

    def render(self, c: int, side: float, dx: float, dy: float, angle: float) -> torch.Tensor:
        """Emoji ``c`` with its side ``side`` x the image side, centre moved (dx, dy) px, turned
        ``angle`` degrees; (3, size, size) in [0, 1]."""
        src = self.glyphs[c]
        out = 2 * self.size
        s = src.width / (side * out)  # input pixels per output pixel
        cos, sin = math.cos(math.radians(angle)) * s, math.sin(math.radians(angle)) * s
        cx, cy = out / 2 + 2 * dx, out / 2 + 2 * dy
        # output (u, v) -> input (a u + b v + c, d u + e v + f): rotate and scale about the centres
        a, b, d, e = cos, sin, -sin, cos
        coeffs = (a, b, src.width / 2 - a * cx - b * cy, d, e, src.height / 2 - d * cx - e * cy)
        im = src.transform((out, out), Image.AFFINE, coeffs, resample=Image.BICUBIC, fillcolor=(255, 255, 255))
        im = im.reduce(2)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)

    def sample(
        self, n: int, g: torch.Generator, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` renders (n, 3, size, size) and their classes (uniform unless ``labels``)."""
        if labels is None:
            labels = torch.randint(0, len(self.glyphs), (n,), generator=g)
        u = torch.rand(n, 4, generator=g, dtype=torch.float64) * 2 - 1  # four uniforms in [-1, 1)
        lo, hi = self.augment.size
        out = torch.empty(n, 3, self.size, self.size)
        for i, c in enumerate(labels.tolist()):
            side = lo + (hi - lo) * (float(u[i, 0]) + 1) / 2
            shift, turn = self.augment.shift, self.augment.rotate
            out[i] = self.render(c, side, shift * float(u[i, 1]), shift * float(u[i, 2]), turn * float(u[i, 3]))
        return out, labels
