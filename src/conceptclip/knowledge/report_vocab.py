"""Vocabulary of the report triplet extractor, as data: concept synonyms (canonical names are
MedKLIP observations), anatomical location patterns (mapped to MedKLIP's 51 locations, with
left/right/bilateral), and NegEx-style negation/uncertainty cues and scope terminators.

Patterns are regular expressions matched case-insensitively on whole words of the lower-cased
sentence (IU X-Ray's "XXXX" masks become "xxxx" and match nothing).
"""

from __future__ import annotations

# MedKLIP observations the extractor never emits: normal-state words (they assert no finding),
# device parts and catch-alls. "borderline" is read as an uncertainty cue instead.
EXCLUDED_OBSERVATIONS = (
    "normal", "clear", "sharp", "sharply", "unremarkable", "intact", "stable", "expand", "aerate",
    "tip", "air", "finding", "borderline", "tail_abnorm_obs", "excluded_obs",
)

# canonical concept (MedKLIP observation) -> surface patterns. Longer matches win over shorter ones.
CONCEPT_PATTERNS: dict[str, list[str]] = {
    "effusion": [r"effusions?"],
    "opacity": [r"opacit(?:y|ies)", r"opacification", r"opacified", r"air ?space opacit(?:y|ies)"],
    "pneumothorax": [r"pneumothora(?:x|ces|xes)"],
    "edema": [r"o?edema", r"edematous"],
    "atelectasis": [r"atelectas[ie]s", r"atelectatic(?: changes?)?"],
    "tube": [r"(?:endotracheal|et|ng|nasogastric|orogastric|chest|feeding|enteric|gastrostomy|tracheostomy|"
             r"dobhoff) tubes?", r"tubes?"],
    "consolidation": [r"consolidations?", r"consolidative(?: opacit(?:y|ies))?", r"air ?space (?:disease|consolidation)"],
    "process": [r"process(?:es)?"],
    "abnormality": [r"abnormalit(?:y|ies)"],
    "enlarge": [r"enlarged", r"enlargement", r"enlarging"],
    "low": [r"low(?= (?:lung )?volumes?\b)", r"(?<=volumes are )low", r"(?<=volume is )low",
            r"hypoinflat(?:ed|ion)", r"hypoventilat(?:ed|ory|ion)"],
    "pneumonia": [r"pneumonias?", r"pneumonitis", r"bronchopneumonia"],
    "line": [r"(?:central|venous|central venous|arterial|jugular|subclavian|port|support) lines?"],
    "congestion": [r"congestion", r"congested"],
    "catheter": [r"catheters?"],
    "cardiomegaly": [r"cardiomegaly", r"cardiac enlargement", r"enlarged heart", r"megacardia",
                     r"borderline (?:heart|cardiac) size",
                     r"(?:heart|cardiac) size (?:is |appears )?(?:at )?borderline(?! enlarge)"],
    "fracture": [r"fractures?", r"fractured"],
    "tortuous": [r"tortuous", r"tortuosity", r"ectatic", r"ectasia", r"unfold(?:ed|ing)"],
    "lead": [r"leads?"],
    "disease": [r"diseases?"],
    "calcification": [r"calcifications?", r"calcific", r"calcified(?: (?:granulomas?|(?:lymph )?nodes?|nodules?))?",
                      r"atherosclero(?:sis|tic)(?: (?:calcifications?|changes?|disease))?"],
    "prominence": [r"prominen(?:t|ce)"],
    "device": [r"devices?", r"defibrillator", r"loop recorder", r"aicd", r"icd"],
    "engorgement": [r"engorge(?:d|ment)"],
    "picc": [r"picc(?: lines?)?", r"peripherally inserted central catheter"],
    "clip": [r"(?:surgical |cholecystectomy |vascular )?clips?"],
    "elevation": [r"elevation", r"elevated"],
    "nodule": [r"nodules?", r"nodular(?: opacit(?:y|ies)| densit(?:y|ies))?", r"granulomas?",
               r"granulomatous (?:disease|changes?|process)"],
    "wire": [r"(?:sternotomy |sternal |cerclage )?wires?"],
    "fluid": [r"fluid"],
    "degenerative": [r"degenerative(?: (?:changes?|disease|disc disease|joint disease))?", r"spondylosis",
                     r"osteophytes?", r"spondylitic", r"djd", r"osteoarthritis"],
    "pacemaker": [r"pacemakers?", r"pacers?"],
    "thicken": [r"thicken(?:ing|ed)"],
    "marking": [r"markings?", r"kerley(?: b)? lines", r"septal lines"],
    "scar": [r"scar(?:s|ring|red)?", r"fibrosis", r"fibrotic(?: changes?)?"],
    "hyperinflate": [r"hyperinflat(?:ed|ion)", r"hyperexpan(?:ded|sion)", r"hyperaerat(?:ed|ion)",
                     r"overinflat(?:ed|ion)", r"overexpan(?:ded|sion)"],
    "blunt": [r"blunt(?:ing|ed)?"],
    "loss": [r"volume loss", r"loss of volume"],
    "widen": [r"widen(?:ing|ed)?"],
    "collapse": [r"collapsed?"],
    "density": [r"densit(?:y|ies)"],
    "emphysema": [r"emphysema", r"emphysematous(?: changes?)?", r"copd",
                  r"chronic obstructive (?:pulmonary|lung|airway) disease"],
    "mass": [r"mass(?:es)?", r"mass lesions?"],
    "crowd": [r"crowd(?:ing|ed)"],
    "infiltrate": [r"infiltrates?", r"infiltration", r"infiltrative"],
    "obscure": [r"obscur(?:ed|es|ing|ation)"],
    "deformity": [r"deformit(?:y|ies)", r"scoliosis", r"scoliotic", r"kyphosis", r"kyphotic",
                  r"pectus (?:excavatum|carinatum)"],
    "hernia": [r"hernia(?:s|tion)?"],
    "drainage": [r"drainage", r"drains?"],
    "distention": [r"disten(?:tion|sion|ded)"],
    "shift": [r"shift(?:ed)?", r"deviat(?:ion|ed)"],
    "stent": [r"stents?"],
    "pressure": [r"pressure"],
    "lesion": [r"lesions?"],
    "hardware": [r"hardware", r"screws", r"(?:orthopedic|surgical|spinal|fixation) (?:plates?|rods?)"],
    "dilation": [r"dilat(?:ed|ation|ion)"],
    "chf": [r"chf", r"(?:congestive )?heart failure", r"congestive failure", r"cardiac decompensation"],
    "redistribution": [r"redistribution", r"cephalization"],
    "aspiration": [r"aspiration"],
    "free": [r"free (?:intraperitoneal |subdiaphragmatic |intra-abdominal )?air", r"pneumoperitoneum"],
}

# Concepts whose mention is dropped unless it gets this location (e.g. "low" only of lung volumes).
REQUIRES_LOCATION = {"low": "lung_volumes"}
# Concepts with an implied location.
INTRINSIC_LOCATION = {"cardiomegaly": "heart_size"}
# "enlarged" of the heart is cardiomegaly.
RELABEL_BY_LOCATION = {("enlarge", "heart_size"): "cardiomegaly", ("enlarge", "heart_border"): "cardiomegaly"}
# Base used when only a side is given ("right pneumothorax", "effusion on the left").
DEFAULT_BASE = {
    "effusion": "pleural", "pneumothorax": "pleural", "thicken": "pleural",
    **{c: "lung" for c in ("opacity", "atelectasis", "consolidation", "pneumonia", "infiltrate", "nodule",
                           "mass", "scar", "density", "lesion", "collapse", "aspiration", "edema")},
}

# Location bases -> MedKLIP location by side (None = no side given, "bilateral" when it has its own name).
BASES: dict[str, dict[str | None, str]] = {
    "pleural": {"left": "left_pleural", "right": "right_pleural", None: "pleural_unspec"},
    "hilar": {"left": "left_hilar", "right": "right_hilar", None: "hilar_unspec"},
    "diaphragm": {"left": "left_diaphragm", "right": "right_diaphragm", None: "diaphragm_unspec"},
    "costophrenic": {"left": "left_costophrenic", "right": "right_costophrenic", None: "costophrenic_unspec"},
    "lower_lobe": {"left": "lower_left_lobe", "right": "lower_right_lobe", None: "lung_bases"},
    "upper_lobe": {"left": "upper_left_lobe", "right": "upper_right_lobe", None: "pulmonary"},
    "middle_lobe": {None: "middle_right_lobe"},
    "lingula": {None: "upper_left_lobe"},
    "base": {"left": "left_lower_lung", "right": "right_lower_lung", None: "lung_bases", "bilateral": "lung_bases"},
    "mid_lung": {"left": "left_mid_lung", "right": "right_mid_lung", None: "pulmonary"},
    "upper_lung": {"left": "left_upper_lung", "right": "right_upper_lung", None: "pulmonary"},
    "apical": {"left": "left_apical_lung", "right": "right_apical_lung", None: "lung_apices", "bilateral": "lung_apices"},
    "lung": {"left": "left_lung_unspec", "right": "right_lung_unspec", None: "pulmonary"},
    **{name: {None: name} for name in (
        "heart_size", "heart_border", "retrocardiac", "cardiophrenic_sulcus", "mediastinal", "trachea", "spine",
        "clavicle", "rib", "stomach", "right_atrium", "right_ventricle", "aorta", "svc", "interstitium",
        "parenchymal", "cavoatrial_junction", "cardiopulmonary", "lung_volumes",
    )},
}

# Location patterns -> base. A side word may precede ("left", "right-sided", "bilateral", "both").
LOCATION_PATTERNS: list[tuple[str, str]] = [
    (r"lower lobes?", "lower_lobe"),
    (r"upper lobes?", "upper_lobe"),
    (r"middle lobe", "middle_lobe"),
    (r"lingula(?:r)?", "lingula"),
    (r"(?:lung )?bases?|basilar|basal|lower lungs?(?: zones?)?|lung base", "base"),
    (r"mid(?:-| )?lungs?(?: zones?)?|midlungs?", "mid_lung"),
    (r"upper lungs?(?: zones?)?", "upper_lung"),
    (r"(?:lung )?ap(?:ex|ices)|apical", "apical"),
    (r"lung volumes?", "lung_volumes"),
    (r"lungs?|pulmonary|hemithorax|hemithoraces", "lung"),
    (r"pleural?|pleura", "pleural"),
    (r"hil(?:um|a|ar)", "hilar"),
    (r"(?:hemi)?diaphragms?|(?:hemi)?diaphragmatic|subdiaphragmatic", "diaphragm"),
    (r"(?:costophrenic|cp) (?:angles?|sulc(?:us|i)|recess(?:es)?)|costophrenic", "costophrenic"),
    (r"cardiophrenic(?: angles?| sulc(?:us|i))?", "cardiophrenic_sulcus"),
    (r"retrocardiac", "retrocardiac"),
    (r"heart borders?|cardiac borders?", "heart_border"),
    (r"heart(?: size)?|cardiac(?: silhouette| size| contours?| shadow)?|cardiomediastinal silhouette", "heart_size"),
    (r"mediastin(?:um|al)(?: contours?| silhouette)?", "mediastinal"),
    (r"trache(?:a|al)", "trachea"),
    (r"(?:thoracic |lumbar |thoracolumbar |cervical )?spine|vertebra[el]?|vertebral bod(?:y|ies)|spinal", "spine"),
    (r"clavicles?|clavicular", "clavicle"),
    (r"ribs?", "rib"),
    (r"stomach|gastric", "stomach"),
    (r"right atri(?:um|al)", "right_atrium"),
    (r"right ventric(?:le|ular)", "right_ventricle"),
    (r"(?:thoracic )?aort(?:a|ic)(?: arch| knob)?", "aorta"),
    (r"svc|superior vena cava", "svc"),
    (r"interstiti(?:um|al)", "interstitium"),
    (r"parenchyma(?:l)?", "parenchymal"),
    (r"cavoatrial junction|cavo-atrial junction", "cavoatrial_junction"),
    (r"cardiopulmonary", "cardiopulmonary"),
]
# Whole-word pieces that look like locations but are descriptors ("biapical pleural-parenchymal scarring").
LOCATION_IGNORE = [r"pleural-parenchymal", r"pleuroparenchymal", r"parenchymal-pleural"]
SIDE_PREFIX = r"(?:(?P<side>left|right|bilateral|both|bi)(?:-sided| sided)?[ -]?)?"
# Side-only mentions ("right pneumothorax", "thickening on the right", "effusions bilaterally").
SIDE_ONLY = [
    (r"on the (?P<side>left|right)", None),
    (r"(?P<side>bilateral)ly", None),
    (r"(?P<side>left|right|bilateral)(?:-sided| sided)?", None),
]
BILATERAL_WORDS = {"bilateral", "both", "bi"}  # "bi" as in "bibasilar", "biapical"

# Cues (NegEx-style). pre: scope runs forward; post: backward; both: either way.
NEGATION_PRE = [
    r"no", r"not", r"without", r"negative for", r"free of", r"clear of", r"absence of", r"resolution of",
    r"nor", r"neither", r"never", r"removal of", r"rather than",
]
NEGATION_POST = [
    r"(?:is|are|was|were|has|have) (?:been )?resolved", r"(?:has|have) resolved", r"resolved",
    r"(?:is|are|was|were) (?:not|no longer) (?:seen|identified|visualized|present|evident|demonstrated|appreciated)",
    r"not (?:seen|identified|visualized|present|evident|demonstrated|appreciated)", r"(?:is|are) absent",
    r"(?:has|have) been removed", r"removed", r"(?:is|are) not (?:well[- ])?(?:seen|visualized)",
]
UNCERTAIN_PRE = [
    r"may", r"might", r"could", r"possible", r"possibly", r"probable", r"probably", r"likely",
    r"suspicious (?:for|of)", r"suspected", r"suggestive of", r"suggest(?:s|ing|ed)?", r"concerning for",
    r"concern for", r"questionable", r"question of", r"(?:cannot|can not|could not) (?:exclude|rule out)",
    r"rule out", r"r/o", r"borderline",
    r"equivocal", r"indeterminate", r"differential", r"consider(?:ed)?", r"presum(?:ed|ably)",
    r"worrisome for", r"compatible with an? (?:early|developing)", r"potential", r"(?:to )?evaluate for",
    r"evaluation for", r"(?:to )?assess for",
]
UNCERTAIN_POST = [
    r"(?:cannot|can not|could not) be (?:excluded|ruled out)", r"(?:is|are) not excluded", r"not excluded",
    r"(?:is|are) (?:possible|suspected|questioned|likely|not ruled out)",
]
UNCERTAIN_BOTH = [r"versus", r"vs\.?"]  # covers only the findings right beside it
BOTH_MAX_GAP = 3  # words between "versus" and the finding it covers
# Phrases that contain a negation word but negate nothing (NegEx pseudo-negations).
PSEUDO_NEGATION = [
    r"no (?:significant |interval |definite |appreciable )?(?:change|increase|decrease|worsening|improvement)",
    r"not (?:only|necessarily|changed|significantly changed)", r"without (?:significant |interval )?change",
    r"age[- ]indeterminate",
]
# Tokens that close a cue's scope (punctuation ";" ":" is handled separately; "," is conditional).
SCOPE_TERMINATORS = {"but", "however", "although", "though", "except", "which", "whereas", "otherwise",
                     "aside", "apart", "nevertheless", "yet"}
# After a comma inside a negation scope, the scope continues over a plain list of findings
# ("no pneumothorax, pleural effusion, or focal airspace disease"): only these words may sit between
# the comma and the next finding.
LIST_WORDS = {
    "or", "and", "nor", "a", "an", "the", "any", "other", "focal", "large", "small", "acute", "definite",
    "significant", "obvious", "displaced", "visible", "new", "gross", "overt", "frank", "evidence", "of", "signs",
    "sign", "moderate", "sizable", "appreciable", "xxxx", "confluent", "discrete", "suspicious", "dense",
    "consolidating", "free", "layering", "residual", "substantial", "sizeable", "airspace", "identified",
    "lobar", "segmental", "for",
}
# Words that block attaching a location across them (verbs, prepositions, conjunctions, cues).
BLOCKERS = {
    "is", "are", "was", "were", "be", "been", "with", "without", "of", "in", "at", "on", "and", "or", "nor",
    "but", "to", "for", "from", "by", "no", "not", "may", "might", "could", "likely", "possible", "versus",
    "vs", "there", "which", "the", "a", "an", "this", "that", "these", "those", "than", "as", "into", "over",
    "under", "within", "along", "overlying", "projecting", "suggesting", "represent", "represents",
}
# Copula/adverb words allowed between a subject location and its predicate finding ("heart is not enlarged").
PREDICATE_GAP = {
    "is", "are", "was", "were", "appears", "appear", "remains", "remain", "seems", "seem", "be", "been",
    "being", "now", "again", "still", "not", "no", "longer", "mildly", "moderately", "markedly", "severely",
    "slightly", "minimally", "massively", "borderline", "somewhat", "stably", "newly", "also", "diffusely",
    "chronically", "likely", "possibly", "probably", "top", "normal", "upper", "limits", "of", "xxxx",
}
# Prepositions that link a finding to a following location ("opacity in the right lower lobe").
POST_PREPOSITIONS = {
    "in", "at", "of", "within", "involving", "along", "over", "overlying", "under", "into", "on", "throughout",
    "near", "adjacent", "projecting", "through", "behind", "above", "below", "beneath", "about",
}
# Adjectival surfaces whose location follows them ("enlarged cardiac silhouette").
ADJECTIVE_SURFACES = {
    "tortuous", "ectatic", "prominent", "low", "calcific", "atherosclerotic", "emphysematous", "nodular",
    "atelectatic", "consolidative", "scoliotic", "kyphotic", "infiltrative", "edematous",
}
