"""Per-image prediction tables (CSV) of `train`/`bench` runs, `eval` and `predict`.

Labelled images (a run's predictions.csv, `eval --predictions`):

    part,id,label,p_<class 1>,p_<class 2>,...
    test,images/circle_03,circle,0.912345,0.051234,...

`label` holds the true class name (multi-label: the names joined by ";"), spelt exactly as in the
`p_<class>` headers, so a label and its probability column match by name. Unlabelled images
(`predict`) get `image,prediction,p_<class>...` and, where concepts are scored, `c_<concept>...`.
Fields are CSV-quoted where a name holds a comma or quote.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import torch

from conceptclip.io import write_text


def label_text(label: torch.Tensor, classnames: Sequence[str], multilabel: bool) -> str:
    """A label tensor (class index, or multi-hot row) as class name(s), ";"-joined for multi-label."""
    if multilabel:
        return ";".join(classnames[j] for j in torch.nonzero(label.reshape(-1)).flatten().tolist())
    return classnames[int(label)]


def csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def labelled_rows(part: str, ids: Sequence[str], labels: torch.Tensor, probs: torch.Tensor,
                  classnames: Sequence[str], multilabel: bool) -> list[list[str]]:
    return [[part, sid, label_text(labels[i], classnames, multilabel), *(f"{p:.6f}" for p in probs[i].tolist())]
            for i, sid in enumerate(ids)]


def write_labelled(path: str | Path, classnames: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    """predictions.csv: `part,id,label,p_<class>...` (see the module docstring)."""
    return write_text(path, csv_text(["part", "id", "label", *(f"p_{c}" for c in classnames)], rows))
