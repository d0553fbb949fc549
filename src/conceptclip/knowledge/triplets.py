"""Rule-based (concept, anatomical location, polarity) triplets from free-text radiology reports.

Per sentence: (1) find concept mentions (MedKLIP observations and the synonyms in
`report_vocab`), location mentions (MedKLIP's 51 locations; a side word in front picks the left/
right variant, "bilateral" gives both) and cue mentions; overlaps resolve to the longest match.
(2) Attach a location to each concept by the first rule that applies: implied location
(cardiomegaly -> heart_size); location right before it ("left lower lobe opacity"); location as
the subject of a copula ("the heart is not enlarged"); location after an adjectival finding
("enlarged cardiac silhouette"); location after a preposition ("opacity in the right mid lung",
coordinated locations included); a bare side ("right pneumothorax") with the concept's default
base. (3) Polarity, NegEx-style: a negation or uncertainty cue before a concept covers it up to a
scope terminator ("but", "however", "which", ";", ":" or a comma that does not continue a plain
list of findings); a cue after a concept ("... has resolved", "... cannot be excluded") covers
back to the clause start; "versus" covers both sides. The nearest covering cue decides:
negation -> negative, uncertainty -> uncertain, none -> positive.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from conceptclip.errors import KnowledgeError
import conceptclip.knowledge.report_vocab as V

POLARITIES = ("positive", "negative", "uncertain")


@dataclass(frozen=True)
class Triplet:
    concept: str  # MedKLIP observation name
    location: str | None  # MedKLIP anatomical location, or None when the text names none
    polarity: str  # positive / negative / uncertain
    evidence: str = ""  # the matched words
    sentence: int = 0  # index of the sentence within its text
    section: str = ""  # report section, when extracted from a report

    def key(self) -> tuple[str, str | None, str]:
        return (self.concept, self.location, self.polarity)


@dataclass(frozen=True)
class _Mention:
    ts: int  # first token
    te: int  # one past the last token
    kind: str  # concept / location / side / cue
    value: str  # concept name, location base, side or cue type
    surface: str
    side: str | None = None


# ---- compiled vocabulary ----------------------------------------------------------------
def _alternation(patterns: Iterable[str]) -> str:
    return "|".join(sorted(patterns, key=len, reverse=True))


@lru_cache(maxsize=1)
def _compiled():
    concepts = [(name, re.compile(rf"\b(?:{_alternation(p)})\b")) for name, p in V.CONCEPT_PATTERNS.items()]
    cues = []
    for kind, pats in (("neg_pre", V.NEGATION_PRE), ("neg_post", V.NEGATION_POST), ("unc_pre", V.UNCERTAIN_PRE),
                       ("unc_post", V.UNCERTAIN_POST), ("unc_both", V.UNCERTAIN_BOTH), ("pseudo", V.PSEUDO_NEGATION)):
        cues.append((kind, re.compile(rf"(?<![\w/])(?:{_alternation(pats)})(?![\w/])")))
    locations = [(base, re.compile(rf"\b{V.SIDE_PREFIX}(?:{pat})\b")) for pat, base in V.LOCATION_PATTERNS]
    ignore = re.compile(rf"\b(?:{_alternation(V.LOCATION_IGNORE)})\b")
    sides = [re.compile(rf"\b{pat}\b") for pat, _ in V.SIDE_ONLY]
    return concepts, cues, locations, ignore, sides


_TOKEN = re.compile(r"[a-z0-9]+(?:['/][a-z0-9]+)*|[^\sa-z0-9]")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Za-z0-9(\[])")
_HARD_STOP = {";", ":", ".", "!", "?"}


def split_sentences(text: str) -> list[str]:
    """Split on ., ! or ? followed by space and a capital/digit (decimals like 2.5 stay whole)."""
    text = re.sub(r"\s+", " ", text or "").strip()
    return [s for s in _SENTENCE_SPLIT.split(text) if s.strip()] if text else []


def _longest_non_overlapping(cands: list[tuple[int, int, object]]) -> list[tuple[int, int, object]]:
    chosen: list[tuple[int, int, object]] = []
    for cand in sorted(cands, key=lambda c: (-(c[1] - c[0]), c[0])):
        if all(cand[1] <= c[0] or cand[0] >= c[1] for c in chosen):
            chosen.append(cand)
    return sorted(chosen, key=lambda c: c[0])


class _Sentence:
    """Tokens and mentions of one lower-cased sentence, with the attachment and scope rules."""

    def __init__(self, text: str):
        self.text = text.lower()
        self.tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(self.text)]
        self.words = [t[2] for t in self.tokens]
        concepts_re, cues_re, locations_re, ignore_re, sides_re = _compiled()

        concept_c = [(m.start(), m.end(), name) for name, rx in concepts_re for m in rx.finditer(self.text)]
        concept_c = _longest_non_overlapping(concept_c)
        taken = [(s, e) for s, e, _ in concept_c] + [(m.start(), m.end()) for m in ignore_re.finditer(self.text)]

        def free(s: int, e: int) -> bool:
            return all(e <= a or s >= b for a, b in taken)

        loc_c = [(m.start(), m.end(), (base, m.group("side"))) for base, rx in locations_re
                 for m in rx.finditer(self.text) if free(m.start(), m.end())]
        loc_c = _longest_non_overlapping(loc_c)
        taken += [(s, e) for s, e, _ in loc_c]
        side_c = [(m.start(), m.end(), m.group("side")) for rx in sides_re for m in rx.finditer(self.text)
                  if free(m.start(), m.end())]
        side_c = _longest_non_overlapping(side_c)
        cue_c = _longest_non_overlapping([(m.start(), m.end(), kind) for kind, rx in cues_re for m in rx.finditer(self.text)])

        self.concepts = [self._mention(s, e, "concept", v) for s, e, v in concept_c]
        self.locations = [self._mention(s, e, "location", v[0], v[1]) for s, e, v in loc_c]
        self.sides = [self._mention(s, e, "side", v, v) for s, e, v in side_c]
        self.cues = [self._mention(s, e, "cue", v) for s, e, v in cue_c if v != "pseudo"]
        self.concept_at = {m.ts: m for m in self.concepts}
        self.location_at = {m.ts: m for m in self.locations}
        self.in_concept = {i for m in self.concepts for i in range(m.ts, m.te)}
        self.in_cue = {i for m in self.cues for i in range(m.ts, m.te)}
        self.in_location = {i for m in self.locations for i in range(m.ts, m.te)}

    def _mention(self, s: int, e: int, kind: str, value: str, side: str | None = None) -> _Mention:
        ts = next(i for i, t in enumerate(self.tokens) if t[1] > s)
        te = max(i for i, t in enumerate(self.tokens) if t[0] < e) + 1
        return _Mention(ts, te, kind, value, self.text[s:e], side)

    def _is_word(self, i: int) -> bool:
        return self.words[i][0].isalnum()

    # ---- locations ---------------------------------------------------------------------
    @staticmethod
    def resolve(base: str, side: str | None) -> list[str]:
        table = V.BASES[base]
        if side in V.BILATERAL_WORDS:
            if "bilateral" in table:
                return [table["bilateral"]]
            if "left" in table and "right" in table:
                return [table["left"], table["right"]]
        elif side in ("left", "right") and side in table:
            return [table[side]]
        return [table[None]]

    def _gap_ok(self, a: int, b: int, max_words: int, allowed: set[str] | None = None) -> bool:
        """Tokens a..b-1 are at most `max_words` words (hyphens ignored), no punctuation, no blockers
        (or, with `allowed`, only allowed words), and belong to no other concept or cue."""
        words = 0
        for i in range(a, b):
            w = self.words[i]
            if w == "-":
                continue
            if not self._is_word(i) or i in self.in_concept or (i in self.in_cue and allowed is None):
                return False
            if allowed is not None and w not in allowed:
                return False
            if allowed is None and w in V.BLOCKERS:
                return False
            words += 1
        return words <= max_words

    def _side_after(self, m: _Mention, within: int = 3) -> str | None:
        """A side-only mention ("on the right", "bilaterally") at most `within` copula/adverb words after m."""
        allowed = V.PREDICATE_GAP | {"the", "seen", "noted", "present", "-"}
        for s in self.sides:
            if m.te <= s.ts <= m.te + within and all(self.words[i] in allowed for i in range(m.te, s.ts)):
                return s.value
        return None

    def _with_side(self, loc: _Mention, concept: _Mention) -> list[str]:
        side = loc.side
        if side is None:
            side = self._side_after(concept)
        return self.resolve(loc.value, side)

    def _clause_bounds(self, i: int) -> tuple[int, int]:
        lo = i
        while lo > 0 and self.words[lo - 1] not in _HARD_STOP and self.words[lo - 1] not in V.SCOPE_TERMINATORS:
            lo -= 1
        hi = i
        while hi < len(self.words) and self.words[hi] not in _HARD_STOP and self.words[hi] not in V.SCOPE_TERMINATORS:
            hi += 1
        return lo, hi

    def attach(self, c: _Mention) -> list[str | None]:
        if c.value in V.INTRINSIC_LOCATION:
            return [V.INTRINSIC_LOCATION[c.value]]
        lo, hi = self._clause_bounds(c.ts)
        # 1. location right before the finding: "left lower lobe opacity"
        for loc in sorted(self.locations, key=lambda m: -m.te):
            if lo <= loc.ts and loc.te <= c.ts and self._gap_ok(loc.te, c.ts, 3):
                return self._with_side(loc, c)
        # 1b. a bare side right before it: "right pneumothorax"
        for s in self.sides:
            if s.te <= c.ts and c.value in V.DEFAULT_BASE and self._gap_ok(s.te, c.ts, 2) and s.ts >= lo:
                return self.resolve(V.DEFAULT_BASE[c.value], s.value)
        # 2. location as the subject of a copula: "the heart is not enlarged"
        for loc in sorted(self.locations, key=lambda m: -m.te):
            if lo <= loc.ts and loc.te <= c.ts and self._gap_ok(loc.te, c.ts, 6, allowed=V.PREDICATE_GAP):
                return self._with_side(loc, c)
        # 3. adjectival finding before its location: "enlarged cardiac silhouette"
        surface = c.surface
        if surface.endswith("ed") or surface in V.ADJECTIVE_SURFACES:
            found = self._location_after_adjective(c.te, hi)
            if found is not None:
                return self._with_side(found, c)
        # 4. location after a preposition: "opacity in the right mid lung"
        locs = self._locations_after_preposition(c.te, hi)
        if locs:
            return [v for loc in locs for v in self._with_side(loc, c)]
        # 5. a bare side after it: "effusion on the right", "effusions bilaterally"
        side = self._side_after(c)
        if side is not None and c.value in V.DEFAULT_BASE:
            return self.resolve(V.DEFAULT_BASE[c.value], side)
        return [None]

    def _location_after_adjective(self, i: int, hi: int) -> _Mention | None:
        modifiers = 0
        while i < hi:
            if i in self.location_at:
                return self.location_at[i]
            w = self.words[i]
            if w in {",", "and", "or"}:
                j = i + 1
                while j < hi and self.words[j] in {"and", "or"}:
                    j += 1
                nxt = self.concept_at.get(j)
                if nxt is not None and (nxt.surface.endswith("ed") or nxt.surface in V.ADJECTIVE_SURFACES):
                    i = nxt.te
                    continue
                return None
            if w == "-":
                i += 1
                continue
            if not self._is_word(i) or w in V.BLOCKERS or i in self.in_concept or i in self.in_cue or modifiers >= 3:
                return None
            modifiers += 1
            i += 1
        return None

    def _locations_after_preposition(self, i: int, hi: int) -> list[_Mention]:
        gap, limit = 0, 12
        stop = {"and", "or", "nor", "but", "no", "not", "without", "which", ","}
        while i < hi and limit > 0:
            limit -= 1
            w = self.words[i]
            if i in self.in_concept or i in self.in_cue:
                return []
            if w in V.POST_PREPOSITIONS:
                j = i + 1
                while j < hi and self.words[j] in V.POST_PREPOSITIONS | {"the", "a", "an", "its", "-"}:
                    j += 1
                mods = 0
                while j < hi and j not in self.location_at and mods < 3 and self._is_word(j) \
                        and self.words[j] not in V.BLOCKERS and j not in self.in_concept and j not in self.in_cue:
                    j += 1
                    mods += 1
                if j in self.location_at:
                    found = [self.location_at[j]]
                    k = found[-1].te
                    while k < hi:  # coordinated locations: "in the right atrium and right ventricle"
                        k2 = k
                        while k2 < hi and self.words[k2] in {"and", "or", ",", "the"}:
                            k2 += 1
                        if k2 > k and k2 in self.location_at:
                            found.append(self.location_at[k2])
                            k = self.location_at[k2].te
                        else:
                            break
                    return found
                i += 1
                continue
            if w in stop or (w == "with" and (i + 1 >= hi or self.words[i + 1] not in {"tip", "tips", "its"})):
                return []
            if not self._is_word(i) and w != "-":
                return []
            gap += 1
            if gap > 5:
                return []
            i += 1
        return []

    # ---- polarity ----------------------------------------------------------------------
    def _forward_end(self, start: int) -> int:
        i = start
        while i < len(self.words):
            w = self.words[i]
            if w in _HARD_STOP or w in V.SCOPE_TERMINATORS:
                return i
            if w == ",":
                j = i + 1
                while j < len(self.words) and j not in self.concept_at:
                    if self.words[j] in _HARD_STOP or self.words[j] in V.SCOPE_TERMINATORS:
                        return i
                    if not (self.words[j] in V.LIST_WORDS or j in self.in_location or self.words[j] in {",", "-"}):
                        return i
                    j += 1
                if j >= len(self.words):
                    return i
            i += 1
        return i

    def _backward_start(self, end: int) -> int:
        i = end
        while i > 0 and self.words[i - 1] not in _HARD_STOP | {","} and self.words[i - 1] not in V.SCOPE_TERMINATORS:
            i -= 1
        return i

    def polarity(self, c: _Mention) -> str:
        best: tuple[int, str] | None = None
        for q in self.cues:
            kind = q.value
            dist = None
            if q.ts < c.te and c.ts < q.te:
                dist = 0
            else:
                reach = V.BOTH_MAX_GAP if kind.endswith("_both") else len(self.words)
                if kind.endswith("_pre") or kind.endswith("_both"):
                    if q.te <= c.ts < self._forward_end(q.te) and c.ts - q.te <= reach:
                        dist = c.ts - q.te
                if kind.endswith("_post") or kind.endswith("_both"):
                    if c.te <= q.ts and c.ts >= self._backward_start(q.ts) and q.ts - c.te <= reach:
                        d = q.ts - c.te
                        dist = d if dist is None else min(dist, d)
            if dist is not None and (best is None or dist < best[0]):
                best = (dist, "negative" if kind.startswith("neg") else "uncertain")
        return best[1] if best else "positive"


def _merge_calcified_granulomas(s: _Sentence) -> dict[int, _Mention]:
    """"calcified ... granuloma" split by other words is one calcification: {granuloma mention
    ts: its "calcified" mention} (same clause); the pair is reported once, as calcification at
    the granuloma's location (else the adjective's)."""
    merged = {}
    for g in s.concepts:
        if g.value == "nodule" and g.surface.startswith("granulom"):
            lo, _ = s._clause_bounds(g.ts)
            for c in s.concepts:
                if c.value == "calcification" and c.surface in {"calcified", "calcific"} and lo <= c.ts < g.ts:
                    merged[g.ts] = c
    return merged


def _sentence_triplets(text: str, index: int, section: str) -> list[Triplet]:
    s = _Sentence(text)
    merged = _merge_calcified_granulomas(s)
    absorbed = {m.ts for m in merged.values()}
    out: list[Triplet] = []
    for c in s.concepts:
        if c.ts in absorbed:
            continue  # reported with its granuloma
        if c.ts in merged:
            adjective = merged[c.ts]
            polarity = s.polarity(adjective)
            locations = s.attach(c)
            if locations == [None]:
                locations = s.attach(adjective)
            c = replace(c, value="calcification", surface=f"{adjective.surface} ... {c.surface}")
        else:
            polarity = s.polarity(c)
            locations = s.attach(c)
        for loc in locations:
            concept = V.RELABEL_BY_LOCATION.get((c.value, loc), c.value)
            if concept in V.REQUIRES_LOCATION and loc != V.REQUIRES_LOCATION[concept]:
                continue
            t = Triplet(concept, loc, polarity, c.surface, index, section)
            if all(t.key() != o.key() for o in out):
                out.append(t)
    return out


def extract_triplets(text: str, section: str = "") -> list[Triplet]:
    """All (concept, location, polarity) triplets of a report text, sentence by sentence; one
    triplet per distinct key within a sentence."""
    if not isinstance(text, str):
        raise KnowledgeError(f"extract_triplets: expected report text as a string, got {type(text).__name__}")
    return [t for i, sent in enumerate(split_sentences(text)) for t in _sentence_triplets(sent, i, section)]


@dataclass
class ReportTriplets:
    report_id: str
    triplets: list[Triplet] = field(default_factory=list)


def extract_reports(path: str | os.PathLike, sections: tuple[str, ...] = ("findings", "impression"),
                    id_field: str = "id") -> Iterator[ReportTriplets]:
    """Triplets of each report of a JSONL file (IU X-Ray layout: one object per line with `id`,
    `findings`, `impression`), section by section, in file order."""
    path = Path(path)
    if not path.is_file():
        raise KnowledgeError(f"{path}: reports file not found")
    with open(path, encoding="utf-8", errors="strict") as fh:
        for lineno, line in enumerate(_utf8_lines(fh, path), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KnowledgeError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise KnowledgeError(f"{path}: line {lineno}: not valid JSON (nested too deeply)") from None
            if not isinstance(rec, dict) or id_field not in rec:
                raise KnowledgeError(f"{path}: line {lineno}: expected an object with key {id_field!r}")
            out = ReportTriplets(str(rec[id_field]))
            for sec in sections:
                value = rec.get(sec) or ""
                if not isinstance(value, str):
                    raise KnowledgeError(f"{path}: line {lineno}: {sec!r} must be a string")
                out.triplets.extend(extract_triplets(value, section=sec))
            yield out


def _utf8_lines(fh, path: Path) -> Iterator[str]:
    """Lines of a text file; bytes that are not UTF-8 are a KnowledgeError naming the file."""
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise KnowledgeError(f"{path}: not UTF-8 text ({exc.reason})") from None


def location_phrase(location: str) -> str:
    """"lower_left_lobe" -> "lower left lobe"; "pleural_unspec" -> "pleural"."""
    return location.replace("_unspec", "").replace("_", " ")


def triplet_sentence(t: Triplet) -> str:
    """Knowledge-injection sentence (RC-TPL/MedKLIP style): "There is effusion. It is located at
    left pleural." / "There is no ..." / "There may be ..."."""
    lead = {"positive": "There is", "negative": "There is no", "uncertain": "There may be"}[t.polarity]
    text = f"{lead} {t.concept.replace('_', ' ')}."
    if t.location:
        text += f" It is located at {location_phrase(t.location)}."
    return text


# ---- evaluation -------------------------------------------------------------------------
@dataclass(frozen=True)
class TripletScores:
    precision: float
    recall: float
    f1: float
    n_pred: int
    n_gold: int
    true_positives: int
    concept_location_precision: float  # ignoring polarity
    concept_location_recall: float
    polarity_accuracy: float  # over (concept, location) pairs found in both
    polarity_pairs: int


def _keys(items: Iterable) -> set[tuple]:
    out = set()
    for t in items:
        key = t.key() if isinstance(t, Triplet) else tuple(t)
        if len(key) != 3 or key[2] not in POLARITIES:
            raise KnowledgeError(f"expected (concept, location, polarity) triplets, got {key!r}")
        out.add(key)
    return out


def score_triplets(pred: Mapping[str, Iterable], gold: Mapping[str, Iterable]) -> TripletScores:
    """Micro-averaged over items (sentences/reports) keyed alike; duplicates within an item count once.

    precision = |P ∩ G| / |P|, recall = |P ∩ G| / |G| on exact (concept, location, polarity);
    polarity accuracy = share of (item, concept, location) pairs present in both whose polarity
    sets agree."""
    if set(pred) - set(gold):
        raise KnowledgeError(f"score_triplets: predictions for unknown items {sorted(set(pred) - set(gold))[:5]}")
    tp = n_pred = n_gold = cl_tp = cl_pred = cl_gold = pairs = agree = 0
    for item, gold_items in gold.items():
        g, p = _keys(gold_items), _keys(pred.get(item, []))
        tp, n_pred, n_gold = tp + len(g & p), n_pred + len(p), n_gold + len(g)
        g_cl: dict[tuple, set[str]] = {}
        p_cl: dict[tuple, set[str]] = {}
        for c, loc, pol in g:
            g_cl.setdefault((c, loc), set()).add(pol)
        for c, loc, pol in p:
            p_cl.setdefault((c, loc), set()).add(pol)
        common = set(g_cl) & set(p_cl)
        cl_tp, cl_pred, cl_gold = cl_tp + len(common), cl_pred + len(p_cl), cl_gold + len(g_cl)
        pairs += len(common)
        agree += sum(g_cl[k] == p_cl[k] for k in common)

    def ratio(a: int, b: int) -> float:
        return a / b if b else 1.0

    precision, recall = ratio(tp, n_pred), ratio(tp, n_gold)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return TripletScores(precision, recall, f1, n_pred, n_gold, tp, ratio(cl_tp, cl_pred), ratio(cl_tp, cl_gold),
                         ratio(agree, pairs), pairs)
