"""Drawing explanation maps: colour a map, blend it over its image, lay several side by side,
and encode images as PNG data URLs for self-contained pages.

Pure PIL + matplotlib colormaps (no pyplot, no display). Maps are min-max normalised per map
before colouring, so overlays show where a map is high relative to itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from conceptclip.errors import ConfigError
from conceptclip.io import atomic_write


def _as_2d(map2d: torch.Tensor | np.ndarray) -> np.ndarray:
    m = map2d.detach().float().cpu().numpy() if isinstance(map2d, torch.Tensor) else np.asarray(map2d, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ConfigError(f"overlay: expected one map of shape (h, w), got {m.shape}")
    if not np.isfinite(m).all():
        raise ConfigError("overlay: the map has NaN or inf values")
    return m.astype(np.float32)


def normalize01(map2d: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max normalise one map to [0, 1] (a constant map becomes zeros)."""
    m = _as_2d(map2d)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def colorize(map2d: torch.Tensor | np.ndarray, size: tuple[int, int] | None = None, cmap: str = "jet") -> Image.Image:
    """RGB image of a map: normalised to [0, 1], resized bilinearly to `size` (W, H), coloured."""
    from matplotlib import colormaps

    m = normalize01(map2d)
    if size is not None and (m.shape[1], m.shape[0]) != tuple(size):
        m = np.asarray(Image.fromarray(m, mode="F").resize(tuple(size), Image.BILINEAR), dtype=np.float32)
    try:
        colours = colormaps[cmap](np.clip(m, 0.0, 1.0))[..., :3]
    except KeyError:
        raise ConfigError(f"cmap={cmap!r}: not a matplotlib colormap name") from None
    return Image.fromarray((colours * 255 + 0.5).astype(np.uint8), mode="RGB")


def overlay(image: Image.Image, map2d: torch.Tensor | np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """`(1 - alpha) * image + alpha * colorize(map)`, the map resized to the image."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha}: expected a blend weight in [0, 1]")
    base = image.convert("RGB")
    return Image.blend(base, colorize(map2d, base.size, cmap), alpha)


def title_font(size: int = 11):
    """DejaVu Sans (shipped with matplotlib) at `size` px: its spaces are word-wide, where PIL's
    built-in bitmap font draws them about a pixel wide ("cat0.50"); PIL's default when absent."""
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def fit_title(draw, title: str, width: int, font) -> str:
    """`title` cut (with "…") to fit `width` pixels in `font`, spaces kept."""
    if draw.textlength(title, font=font) <= width:
        return title
    while title and draw.textlength(title + "…", font=font) > width:
        title = title[:-1]
    return title.rstrip() + "…"


def overlay_panel(image: Image.Image, maps: torch.Tensor | np.ndarray, titles: Sequence[str] | None = None,
                  alpha: float = 0.5, cmap: str = "jet", pad: int = 4, title_height: int = 14,
                  banner: str | None = None) -> Image.Image:
    """The image followed by one overlay per map (T, h, w), side by side, each with its title; a
    `banner` (e.g. a failed sanity check) is written in red above, wrapped to the panel's width."""
    maps = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    if maps.dim() != 3:
        raise ConfigError(f"overlay_panel: expected maps (T, h, w), got {tuple(maps.shape)}")
    titles = list(titles) if titles is not None else [str(i) for i in range(maps.shape[0])]
    if len(titles) != maps.shape[0]:
        raise ConfigError(f"overlay_panel: {len(titles)} titles for {maps.shape[0]} maps")
    base = image.convert("RGB")
    tiles = [(base, "image")] + [(overlay(base, m, alpha, cmap), t) for m, t in zip(maps, titles)]
    w, h = base.size
    width = len(tiles) * (w + pad) + pad
    lines = _wrap(banner, max(20, (width - 2 * pad) // 6)) if banner else []
    top = len(lines) * title_height + (pad if lines else 0)
    canvas = Image.new("RGB", (width, top + h + title_height + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = title_font(max(8, title_height - 3))
    for k, line in enumerate(lines):
        draw.text((pad, pad + k * title_height), line, fill=(180, 0, 0), font=font)
    for i, (tile, title) in enumerate(tiles):
        x = pad + i * (w + pad)
        canvas.paste(tile, (x, top + pad + title_height))
        draw.text((x, top + pad), fit_title(draw, title, w, font), fill="black", font=font)
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width) or [text]


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG bytes (in memory)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_data_url(image: Image.Image | bytes) -> str:
    """`data:image/png;base64,...` of a PIL image (or of PNG bytes): what a self-contained HTML
    page or a JSON answer embeds instead of a file path."""
    import base64

    data = image if isinstance(image, bytes) else png_bytes(image)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    """A copy no larger than `size` x `size`, aspect kept (for embedding images in pages)."""
    out = image.convert("RGB")
    out.thumbnail((size, size), Image.BICUBIC)
    return out


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically."""
    return atomic_write(path, lambda p: image.save(p, format="PNG"))
