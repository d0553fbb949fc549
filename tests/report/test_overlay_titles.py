"""Overlay titles keep their spaces: PIL's built-in bitmap font drew them about a pixel wide, so
"cat 0.50" read "cat0.50"; titles are drawn in DejaVu Sans and cut to the tile with "…"."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from conceptclip.report.overlay import fit_title, overlay_panel, title_font


def test_spaces_are_word_wide_and_long_titles_are_cut_with_spaces_kept():
    font = title_font(11)
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    assert draw.textlength("cat 0.50", font=font) - draw.textlength("cat0.50", font=font) >= 3
    cut = fit_title(draw, "a dermoscopy image with blue-whitish veil and more", 150, font)
    assert cut.endswith("…") and cut.startswith("a dermoscopy image") and draw.textlength(cut, font=font) <= 150
    assert fit_title(draw, "cat 0.50", 150, font) == "cat 0.50"


def test_panel_draws_the_title_text_in_the_title_band():
    im = Image.new("RGB", (96, 96), "white")
    one = np.asarray(overlay_panel(im, torch.zeros(1, 4, 4), ["cat 0.50"]))
    blank = np.asarray(overlay_panel(im, torch.zeros(1, 4, 4), [""]))
    band = slice(0, 18)
    assert (one[band] != blank[band]).any()  # the title is drawn
