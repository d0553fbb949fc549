"""Report figures as PNG bytes (matplotlib, Agg backend, nothing shown or written to disk):
confusion matrix, reliability diagram, training curves, t-SNE of prompt vs concept tokens, and a
method's concept heat maps over an image."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from conceptclip.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any, dpi: int = 110, tight: bool = True) -> bytes:
    """Encode a matplotlib figure as PNG bytes and close it; `tight=False` keeps the figure's own
    size (figsize x dpi pixels) instead of cropping to what is drawn."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buf.getvalue()


def confusion_png(matrix: np.ndarray, classnames: Sequence[str], title: str = "") -> bytes:
    """Counts M[i, j] = #{true i, predicted j}, rows also shown as row-normalised shades."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(classnames):
        raise ConfigError(f"confusion_png: expected a ({len(classnames)}, {len(classnames)}) matrix, got {m.shape}")
    plt = _pyplot()
    c = len(classnames)
    side = 1.2 + 0.75 * c
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    rows = m.sum(axis=1, keepdims=True)
    shade = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=9,
                    color="white" if shade[i, j] > 0.55 else "black")
    ax.set_xticks(range(c), classnames, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(c), classnames, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    return figure_png(fig)


def reliability_png(confidence: np.ndarray, accuracy: np.ndarray, count: np.ndarray, ece: float | None = None,
                    title: str = "") -> bytes:
    """Reliability diagram: per equal-width bin, the mean accuracy against the mean confidence
    (the diagonal is perfect calibration), with the bin counts below."""
    conf, acc, cnt = (np.asarray(a, dtype=float).reshape(-1) for a in (confidence, accuracy, count))
    n_bins = conf.shape[0]
    edges = np.linspace(0, 1, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    plt = _pyplot()
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(4.2, 4.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ok = cnt > 0
    ax.bar(centers[ok], acc[ok], width=1 / n_bins, edgecolor="#1f4e79", color="#6fa8dc", label="accuracy")
    ax.plot(conf[ok], acc[ok], "o", color="#c0392b", markersize=3, label="(confidence, accuracy)")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.set_title((title or "reliability") + (f" · ECE {ece:.3f}" if ece is not None else ""), fontsize=9, pad=16)
    axc.bar(centers, cnt, width=1 / n_bins, color="#999999")
    axc.set_xlim(0, 1)
    axc.set_xlabel("confidence")
    axc.set_ylabel("count")
    return figure_png(fig)


def history_png(histories: Sequence[tuple[str, list[dict[str, Any]]]], title: str = "") -> bytes | None:
    """Training loss (left axis) and the validation metric (right axis) per epoch, one line per
    run; None when no run logged epochs."""
    histories = [(n, h) for n, h in histories if len(h) > 0 and any("loss" in e for e in h)]
    if not histories:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    ax2 = ax.twinx()
    for i, (name, hist) in enumerate(histories):
        colour = f"C{i % 10}"
        ep = [e.get("epoch", k) for k, e in enumerate(hist)]
        ax.plot(ep, [e.get("loss", np.nan) for e in hist], color=colour, label=f"{name} loss")
        val_keys = [k for k in hist[-1] if k.startswith("val_")]
        if val_keys:
            ax2.plot(ep, [e.get(val_keys[0], np.nan) for e in hist], "--", color=colour, alpha=0.7,
                     label=f"{name} {val_keys[0]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (solid)")
    ax2.set_ylabel("validation metric (dashed)")
    ax.set_title(title or "training", fontsize=9)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return figure_png(fig)


def tsne_png(coords: np.ndarray, kinds: Sequence[str], labels: Sequence[str], title: str = "") -> bytes:
    """2-D scatter of t-SNE coordinates; `kinds` colour the points (e.g. "prompt" / "concept"),
    `labels` annotate them."""
    xy = np.asarray(coords, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] != len(kinds) or len(kinds) != len(labels):
        raise ConfigError(f"tsne_png: expected (N, 2) coordinates with N kinds and labels, got {xy.shape}, "
                          f"{len(kinds)}, {len(labels)}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    markers = {"prompt": ("o", "#c0392b"), "concept": ("^", "#1f77b4"), "class": ("s", "#2ca02c")}
    for kind in dict.fromkeys(kinds):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        marker, colour = markers.get(kind, ("x", "#555555"))
        ax.scatter(xy[idx, 0], xy[idx, 1], marker=marker, color=colour, s=28, label=kind)
    for (x, y), text in zip(xy, labels):
        ax.annotate(text[:28], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7)
    ax.set_title(title or "t-SNE of prompt and concept tokens", fontsize=9)
    return figure_png(fig)


def bench_plot_png(protocol: str, summary: list[dict[str, Any]], title: str = "") -> bytes:
    """The bench layer's own few-shot / base-to-novel figure (`bench.table`), as PNG bytes."""
    import tempfile
    from pathlib import Path

    from conceptclip.bench.table import base2novel_plot, fewshot_plot

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{protocol}.png"
        (fewshot_plot if protocol == "fewshot" else base2novel_plot)(summary, path, title=title)
        return path.read_bytes()


def concept_maps_png(image: Image.Image, maps: torch.Tensor | np.ndarray, titles: Sequence[str], header: str = "image", alpha: float = 0.5,
                     cmap: str = "jet", tile: float = 2.0, title_height: float = 0.75, dpi: int = 100) -> bytes:
    """The image followed by one heat-map overlay per concept (maps (T, h, w), coloured and blended
    by `overlay.overlay`), in one row, each titled (wrapped to its tile). A fixed size, so callers
    know it: (1 + T) * tile by tile + title_height inches at `dpi`."""
    import textwrap

    import torch

    from conceptclip.report.overlay import overlay

    maps = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    if maps.dim() != 3 or maps.shape[0] == 0:
        raise ConfigError(f"concept_maps_png: expected maps (T, h, w) with T >= 1, got {tuple(maps.shape)}")
    if len(titles) != maps.shape[0]:
        raise ConfigError(f"concept_maps_png: {len(titles)} titles for {maps.shape[0]} maps")
    base = image.convert("RGB")
    tiles = [(base, header)] + [(overlay(base, m, alpha, cmap), t) for m, t in zip(maps, titles)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tiles), figsize=(len(tiles) * tile, tile + title_height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=tile / (tile + title_height), wspace=0.06)
    width = max(8, int(tile * 13))  # characters per title line at 8 pt
    for ax, (img, title) in zip(axes[0], tiles):
        ax.imshow(np.asarray(img))
        ax.set_axis_off()
        lines = [ln for part in str(title).split("\n") for ln in (textwrap.wrap(part, width) or [""])]
        ax.set_title("\n".join(lines[:4]), fontsize=8)
    return figure_png(fig, dpi=dpi, tight=False)
