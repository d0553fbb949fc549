"""Knowledge layer: concept banks with provenance (schema, loaders, merge), prompt builders,
pruning, LLM elicitation with an on-disk cache, and radiology-report triplet extraction.

Heavy parts (torch for pruning, the CLI) are imported by their own modules only."""

from conceptclip.knowledge.schema import (
    BANK_KINDS, POLARITIES, SCHEMA_VERSION, SOURCE_KINDS, ClassEntry, Concept, ConceptBank, Provenance,
    bank_from_dict, content_hash, load_bank, merge_banks, save_bank, simple_bank, validate_bank,
)
from conceptclip.knowledge.loaders import list_shared_banks, load_shared_bank
from conceptclip.knowledge.skin import ph2_bank, ph2_concepts_per_image
from conceptclip.knowledge.templates import BUILTIN_TEMPLATES, PromptTemplate, get_template
from conceptclip.knowledge.prompts import (
    category_rationale_prompts, clinical_concept_prompts, deal_prompts, ensemble_prompts, rationale_prompt,
)
from conceptclip.knowledge.triplets import Triplet, extract_reports, extract_triplets, score_triplets

__all__ = [
    "BANK_KINDS", "POLARITIES", "SCHEMA_VERSION", "SOURCE_KINDS", "ClassEntry", "Concept", "ConceptBank",
    "Provenance", "bank_from_dict", "content_hash", "load_bank", "merge_banks", "save_bank", "simple_bank",
    "validate_bank", "list_shared_banks", "load_shared_bank", "ph2_bank", "ph2_concepts_per_image",
    "BUILTIN_TEMPLATES", "PromptTemplate", "get_template", "category_rationale_prompts", "clinical_concept_prompts",
    "deal_prompts", "ensemble_prompts", "rationale_prompt", "Triplet", "extract_reports", "extract_triplets",
    "score_triplets",
]
