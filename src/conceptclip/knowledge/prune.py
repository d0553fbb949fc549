"""Bank clean-up that reports every removal: format checks, exact duplicates, near-duplicates by
text-embedding cosine similarity, and statistics-based outlier pruning of prompt ensembles.

All steps work within one class, in bank order, and keep the first of a group, so the result is
reproducible. Outlier rule (BiomedCoOp-style, applied per class to the entries that survived the
earlier steps, when at least `outlier_min_size` remain): with unit-norm embeddings e_i and the
ensemble mean direction m = normalise(mean_i e_i), score s_i = cos(e_i, m); with mu and sigma the
mean and population standard deviation (ddof=0) of the scores, drop every entry with
s_i < mu - z * sigma (default z = 2.0: a two-sigma low outlier). At least `min_keep` entries are
kept (the highest-scoring ones) whatever z says.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.schema import ClassEntry, ConceptBank

Embedder = Callable[[list[str]], torch.Tensor]
REASONS = ("format", "exact_duplicate", "near_duplicate", "outlier")


@dataclass(frozen=True)
class PruneConfig:
    near_duplicate_threshold: float = 0.95  # cosine >= this -> near-duplicate of an earlier entry
    outlier_z: float = 2.0
    min_keep: int = 3
    outlier_min_size: int = 5  # no outlier statistics on fewer entries
    min_chars: int = 2
    max_words: int = 60  # CLIP's text tower sees 77 tokens; longer prompts get truncated
    check_format: bool = True
    exact_duplicates: bool = True
    near_duplicates: bool = True
    outliers: bool = True

    def __post_init__(self):
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise KnowledgeError(f"near_duplicate_threshold: expected a number in (0, 1], got {self.near_duplicate_threshold}")
        if self.outlier_z < 0:
            raise KnowledgeError(f"outlier_z: expected a non-negative number, got {self.outlier_z}")
        if self.min_keep < 1:
            raise KnowledgeError(f"min_keep: expected a positive integer, got {self.min_keep}")


@dataclass(frozen=True)
class Removal:
    class_name: str
    index: int  # position in the class before pruning
    phrase: str
    reason: str
    detail: str
    score: float | None = None  # cosine to the kept match (near_duplicate) or to the mean (outlier)
    kept_index: int | None = None  # the entry it duplicates


@dataclass
class PruneReport:
    bank: str
    config: PruneConfig
    n_before: int
    n_after: int
    removals: list[Removal] = field(default_factory=list)
    per_class: dict[str, tuple[int, int]] = field(default_factory=dict)  # class -> (before, after)

    def counts(self) -> dict[str, int]:
        c = Counter(r.reason for r in self.removals)
        return {reason: c.get(reason, 0) for reason in REASONS}

    def to_dict(self) -> dict:
        return {
            "bank": self.bank, "config": asdict(self.config), "n_before": self.n_before,
            "n_after": self.n_after, "removed": self.counts(),
            "per_class": {k: {"before": b, "after": a} for k, (b, a) in self.per_class.items()},
            "removals": [asdict(r) for r in self.removals],
        }


def normalise_text(text: str) -> str:
    """Key for exact duplicates: NFKC, case-folded, whitespace collapsed, trailing . ; , removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip().rstrip(".;, ").strip()


def format_problem(text: str, config: PruneConfig) -> str | None:
    """Why an entry is unusable as a prompt phrase, or None."""
    stripped = text.strip()
    if len(stripped) < config.min_chars:
        return f"shorter than {config.min_chars} characters"
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n" for ch in text):
        return "contains control characters"
    if re.search(r"\{[^}]*\}", text):
        return "contains an unfilled template slot {...}"
    n_words = len(stripped.split())
    if n_words > config.max_words:
        return f"{n_words} words, more than {config.max_words}"
    if not re.search(r"\w", stripped):
        return "no letters or digits"
    return None


def outlier_scores(emb: torch.Tensor) -> torch.Tensor:
    """s_i = cos(e_i, normalise(mean_j e_j)) for unit-norm rows e_i."""
    mean = torch.nn.functional.normalize(emb.mean(0, keepdim=True), dim=-1)
    return (emb @ mean.T).squeeze(1)


def outlier_mask(scores: torch.Tensor, z: float, min_keep: int) -> torch.Tensor:
    """True = keep: s_i >= mu - z*sigma (sigma with ddof=0), then top up to `min_keep` by score."""
    mu, sigma = scores.mean(), scores.std(unbiased=False)
    keep = scores >= mu - z * sigma
    if int(keep.sum()) < min(min_keep, len(scores)):
        keep = torch.zeros_like(keep)
        keep[torch.argsort(scores, descending=True)[:min_keep]] = True
    return keep


def _check_embeddings(emb: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != n:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise KnowledgeError(f"embed: expected a ({n}, dim) tensor, got {shape}")
    emb = emb.float()
    if not torch.allclose(emb.norm(dim=-1), torch.ones(n), atol=1e-3):
        raise KnowledgeError("embed: rows must be L2-normalised")
    return emb


def prune_bank(
    bank: ConceptBank, config: PruneConfig = PruneConfig(), embed: Embedder | None = None,
) -> tuple[ConceptBank, PruneReport]:
    """Apply the enabled steps class by class; return the pruned bank and the report. `embed`
    defaults to the packaged MiniLM encoder and is only called when an embedding step is on."""
    needs_embed = config.near_duplicates or config.outliers
    if needs_embed and embed is None:
        from conceptclip.knowledge.embed import minilm_embed as embed
    report = PruneReport(bank=bank.name, config=config, n_before=bank.n_concepts, n_after=0)
    new_classes = {}
    for cname, entry in bank.classes.items():
        concepts = list(entry.concepts)
        alive = list(range(len(concepts)))

        def drop(i: int, reason: str, detail: str, score: float | None = None, kept: int | None = None) -> None:
            report.removals.append(Removal(cname, i, concepts[i].phrase, reason, detail, score, kept))

        if config.check_format:
            kept = []
            for i in alive:
                problem = format_problem(concepts[i].phrase, config)
                if problem:
                    drop(i, "format", problem)
                else:
                    kept.append(i)
            alive = kept
        if config.exact_duplicates:
            first: dict[str, int] = {}
            kept = []
            for i in alive:
                key = normalise_text(concepts[i].phrase)
                if key in first:
                    drop(i, "exact_duplicate", f"same text as entry {first[key]}", 1.0, first[key])
                else:
                    first[key] = i
                    kept.append(i)
            alive = kept
        emb = None
        if needs_embed and alive:
            emb = _check_embeddings(embed([concepts[i].phrase for i in alive]), len(alive))
        if config.near_duplicates and emb is not None:
            sims = emb @ emb.T
            kept_rows: list[int] = []
            for row in range(len(alive)):
                if kept_rows:
                    best = int(torch.argmax(sims[row, kept_rows]))
                    score = float(sims[row, kept_rows[best]])
                    if score >= config.near_duplicate_threshold:
                        k = alive[kept_rows[best]]
                        drop(alive[row], "near_duplicate", f"cosine {score:.3f} to entry {k}", score, k)
                        continue
                kept_rows.append(row)
            alive, emb = [alive[r] for r in kept_rows], emb[kept_rows]
        if config.outliers and emb is not None and len(alive) >= config.outlier_min_size:
            scores = outlier_scores(emb)
            keep = outlier_mask(scores, config.outlier_z, config.min_keep)
            mu, sigma = float(scores.mean()), float(scores.std(unbiased=False))
            for row in range(len(alive)):
                if not keep[row]:
                    s = float(scores[row])
                    drop(alive[row], "outlier", f"cosine to mean {s:.3f} < {mu:.3f} - {config.outlier_z:g} x {sigma:.3f}", s)
            alive = [i for r, i in enumerate(alive) if keep[r]]
        new_classes[cname] = ClassEntry(tuple(concepts[i] for i in sorted(alive)), entry.description)
        report.per_class[cname] = (len(concepts), len(alive))
    pruned = bank.with_classes(new_classes)
    report.n_after = pruned.n_concepts
    report.removals.sort(key=lambda r: (list(bank.classes).index(r.class_name), r.index))
    return pruned, report
