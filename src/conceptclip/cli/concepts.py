"""`conceptclip concepts ...`: list, show, export, merge, prune and elicit concept banks; extract
report triplets. A BANK argument is a bank JSON file or a shared-bank name (`concepts list`)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from conceptclip.errors import ConceptClipError, KnowledgeError
from conceptclip.io import write_json, write_text

concepts_app = typer.Typer(help="Concept banks: inspect, export, prune, elicit; report triplets.", no_args_is_help=True)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def _run(fn: Callable[[], T]) -> T:
    """Run a command body; documented errors become one red line on stderr and exit code 2."""
    try:
        return fn()
    except ConceptClipError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _load(ref: str):
    from conceptclip.knowledge.resolve import load_bank_any

    return load_bank_any(ref)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "bank"


@concepts_app.command("list")
def list_cmd() -> None:
    """List the shared banks that load by name."""
    from conceptclip.knowledge.loaders import list_shared_banks

    for name in _run(list_shared_banks):
        console.print(name, highlight=False)


@concepts_app.command()
def show(bank: str = typer.Argument(..., help="bank JSON file or shared-bank name"),
         limit: int = typer.Option(3, help="phrases shown per class"),
         max_classes: int = typer.Option(20, help="classes shown")) -> None:
    """Summarise a bank: name, hash, sources, classes and their first phrases."""
    b = _run(lambda: _load(bank))
    console.print(f"[bold]{b.name}[/bold]  kind={b.kind}  classes={len(b.classes)}  entries={b.n_concepts}", highlight=False)
    console.print(f"content_hash={b.content_hash}", highlight=False)
    src = Table("source", "kind", "citation", "model", "licence")
    for key, p in b.sources.items():
        src.add_row(key, p.kind, p.citation, p.model or "", p.license or "")
    console.print(src)
    if b.locations:
        console.print(f"locations ({len(b.locations)}): " + ", ".join(b.locations), highlight=False)
    tab = Table("class", "n", "first phrases")
    for cname in list(b.classes)[:max_classes]:
        entries = b.classes[cname].concepts
        shown = "; ".join(c.phrase + (f" ({c.frequency:.2f})" if c.frequency is not None else "") for c in entries[:limit])
        tab.add_row(cname, str(len(entries)), shown)
    console.print(tab)
    if len(b.classes) > max_classes:
        console.print(f"... {len(b.classes) - max_classes} more classes", highlight=False)


@concepts_app.command()
def export(bank: str = typer.Argument(..., help="bank JSON file or shared-bank name"),
           out: Path = typer.Option(..., "--out", "-o", help="output file"),
           fmt: str = typer.Option("bank", "--format", help="bank | lists | prompts | csv"),
           template: str = typer.Option("xcoop", help="for --format prompts: xcoop | deal | ecor | ensemble"),
           modality: Optional[str] = typer.Option(
               None, help="xcoop prompts: without it the paper's 'a photo of CLASS, with C1, ..., and Cn.' (what "
                          "`train -m xcoop` uses); with it our earlier 'a MODALITY image of CLASS, which has ...'"),
           top_k: Optional[int] = typer.Option(None, help="at most this many concepts per class in a prompt")) -> None:
    """Write a bank as schema JSON, {class: [phrase]} lists, built prompts, or CSV."""
    from conceptclip.knowledge import prompts as P
    from conceptclip.knowledge.schema import save_bank

    def body() -> None:
        b = _load(bank)
        if fmt == "bank":
            save_bank(b, out)
        elif fmt == "lists":
            write_json(out, b.as_dict_of_lists())
        elif fmt == "prompts":
            builders = {
                "xcoop": lambda: P.clinical_concept_prompts(b, modality=modality, top_k=top_k),
                "deal": lambda: P.deal_prompts(b, top_k=top_k),
                "ecor": lambda: P.category_rationale_prompts(b, top_k=top_k),
                "ensemble": lambda: P.ensemble_prompts(b),
            }
            if template not in builders:
                raise KnowledgeError(f"--template: expected one of {', '.join(builders)}, got {template!r}")
            write_json(out, builders[template]())
        elif fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["class", "phrase", "description", "location", "rationale", "polarity", "frequency", "count",
                        "source"])
            for cname, entry in b.classes.items():
                for c in entry.concepts:
                    w.writerow([cname, c.phrase, c.description or "", c.location or "", c.rationale or "", c.polarity,
                                "" if c.frequency is None else c.frequency, "" if c.count is None else c.count, c.source])
            write_text(out, buf.getvalue())
        else:
            raise KnowledgeError(f"--format: expected bank, lists, prompts or csv, got {fmt!r}")
        console.print(f"wrote {out}", highlight=False)

    _run(body)


@concepts_app.command()
def merge(banks: List[str] = typer.Argument(..., help="two or more banks"),
          out: Path = typer.Option(..., "--out", "-o"), name: Optional[str] = typer.Option(None)) -> None:
    """Merge banks (classes united, provenance kept) into one bank file."""
    from conceptclip.knowledge.schema import merge_banks, save_bank

    def body() -> None:
        merged = merge_banks([_load(b) for b in banks], name=name)
        save_bank(merged, out)
        console.print(f"wrote {out}: {len(merged.classes)} classes, {merged.n_concepts} entries", highlight=False)

    _run(body)


@concepts_app.command()
def prune(banks: List[str] = typer.Argument(..., help="banks to prune"),
          out_dir: Optional[Path] = typer.Option(None, help="write <name>.json and <name>.prune.json here"),
          threshold: float = typer.Option(0.95, help="near-duplicate cosine threshold"),
          z: float = typer.Option(2.0, help="outlier rule: drop cos-to-mean < mean - z*std"),
          min_keep: int = typer.Option(3, help="keep at least this many entries per class"),
          near: bool = typer.Option(True, help="near-duplicate removal (needs the text encoder)"),
          outliers: bool = typer.Option(True, help="outlier pruning (needs the text encoder)")) -> None:
    """Remove bad-format entries, exact and near duplicates and outliers; report every removal."""
    from conceptclip.knowledge.prune import REASONS, PruneConfig, prune_bank
    from conceptclip.knowledge.schema import save_bank

    def body() -> None:
        cfg = PruneConfig(near_duplicate_threshold=threshold, outlier_z=z, min_keep=min_keep,
                          near_duplicates=near, outliers=outliers)
        tab = Table()
        tab.add_column("bank", no_wrap=True)
        for header in ("before", *(r.split("_")[0] for r in REASONS), "after"):
            tab.add_column(header, justify="right")
        totals: Counter = Counter()
        for ref in banks:
            bank = _load(ref)
            pruned, report = prune_bank(bank, cfg)
            counts = report.counts()
            totals.update(counts)
            totals["before"] += report.n_before
            totals["after"] += report.n_after
            tab.add_row(bank.name, str(report.n_before), *(str(counts[r]) for r in REASONS), str(report.n_after))
            if out_dir is not None:
                save_bank(pruned, out_dir / f"{_slug(bank.name)}.json")
                write_json(out_dir / f"{_slug(bank.name)}.prune.json", report.to_dict())
        if len(banks) > 1:
            tab.add_row("total", str(totals["before"]), *(str(totals[r]) for r in REASONS), str(totals["after"]))
        console.print(tab)

    _run(body)


@concepts_app.command()
def elicit(classes: List[str] = typer.Option(None, "--class", "-c", help="class name (repeat)"),
           classes_from: Optional[str] = typer.Option(None, help="take the class names of this bank"),
           template: str = typer.Option("descriptors", help="descriptors | cot_concepts | rationales"),
           modality: str = typer.Option("medical", help="image modality named in the prompt"),
           n: int = typer.Option(6, help="items asked per class"),
           base_url: str = typer.Option(..., help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"),
           model: str = typer.Option(..., help="model name sent to the endpoint"),
           cache_dir: Optional[Path] = typer.Option(None, help="answer cache (default: <user cache>/llm)"),
           timeout: float = typer.Option(60.0), retries: int = typer.Option(3),
           min_interval: float = typer.Option(0.0, help="seconds between requests"),
           out: Path = typer.Option(..., "--out", "-o"), name: Optional[str] = typer.Option(None)) -> None:
    """Ask an LLM for concepts per class (key from $CONCEPTCLIP_LLM_KEY) and save a bank."""
    from conceptclip.knowledge.elicit import elicit_bank
    from conceptclip.knowledge.llm import ChatClient, LLMConfig
    from conceptclip.knowledge.schema import save_bank
    from conceptclip.paths import cache_dir as user_cache

    def body() -> None:
        names = list(classes or [])
        if classes_from:
            names += [c for c in _load(classes_from).classes if c not in names]
        if not names:
            raise KnowledgeError("give class names with --class or --classes-from")
        cfg = LLMConfig(base_url=base_url, model=model, timeout_s=timeout, max_retries=retries,
                        min_interval_s=min_interval, cache_dir=str(cache_dir or user_cache() / "llm"))
        client = ChatClient(cfg)
        bank = elicit_bank(client, names, template=template, modality=modality, n=n, name=name)
        save_bank(bank, out)
        s = client.stats
        console.print(f"wrote {out}: {len(bank.classes)} classes, {bank.n_concepts} concepts; cache hits {s.cache_hits}, "
                      f"misses {s.cache_misses}, HTTP requests {s.requests}, retries {s.retries}", highlight=False)

    _run(body)


@concepts_app.command()
def triplets(reports: Path = typer.Argument(..., help="JSONL reports (IU X-Ray layout)"),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="write one JSON line per report"),
             limit: Optional[int] = typer.Option(None, help="only the first N reports"),
             top: int = typer.Option(10, help="most frequent concepts shown")) -> None:
    """Extract (concept, location, polarity) triplets from reports and summarise them."""
    from conceptclip.knowledge.triplets import extract_reports

    def body() -> None:
        start = time.perf_counter()
        lines, counts, n_reports, n_with, n_triplets = [], Counter(), 0, 0, 0
        for rep in extract_reports(reports):
            if limit is not None and n_reports >= limit:
                break
            n_reports += 1
            n_with += bool(rep.triplets)
            n_triplets += len(rep.triplets)
            counts.update(t.concept for t in rep.triplets)
            if out is not None:
                lines.append(json.dumps({"id": rep.report_id, "triplets": [
                    {"concept": t.concept, "location": t.location, "polarity": t.polarity, "section": t.section,
                     "evidence": t.evidence} for t in rep.triplets]}, ensure_ascii=False))
        seconds = time.perf_counter() - start
        if out is not None:
            write_text(out, "\n".join(lines) + ("\n" if lines else ""))
        console.print(f"{n_reports} reports, {n_triplets} triplets, {n_with} reports with >= 1 triplet, "
                      f"{seconds:.1f} s", highlight=False)
        console.print("top concepts: " + ", ".join(f"{c} {k}" for c, k in counts.most_common(top)), highlight=False)

    _run(body)
