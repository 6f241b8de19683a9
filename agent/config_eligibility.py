"""``[eligibility]``: which series are non-contrast chest CT, and its word lists."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from agent.config_base import CT_SOP_CLASSES, Contradiction, Millimetres
from agent.config_base import Section as _Section

# Word edges for the contrast vocabulary: not a letter or digit on either side, so
# "W" does not match inside "BRW", "NC" inside "NECK", "KM" inside "SKM"; "_" and
# punctuation count as edges ("CHEST_WO" is "CHEST WO").
_B = r"(?<![^\W_])"
_E = r"(?![^\W_])"
# The nouns that follow "with"/"without" and their translations.
_AGENT_NOUN = (
    r"(i\.?v\.?[\s_.-]*)?(contrast|contraste|contrasto|kontrast|kontrastmittel|km|cm|mdc|pdc"
    r"|iode|injection|inj|i\.?v\.?)"
)

#: Descriptions saying the study holds both kinds of series ("W/WO"): only series
#: level words or the image can decide a series.
DEFAULT_MIXED_PATTERNS: list[str] = [
    _B + r"w\s*/?\s*(and|&|\+|-|/)?\s*w/?o" + _E,  # W/WO, W AND WO, W&WO, W-W/O
    _B + r"w/?o\s*(and|&|\+|-|/)\s*w" + _E,  # WO/W, W/O AND W
    _B + r"with\s*(and|&|/|or)\s*without" + _E,
    _B + r"without\s*(and|&|/|or)\s*with" + _E,
    _B + r"c-\s*/?\s*(and|&)?\s*c\+",  # C-/C+
    _B + r"c\+\s*/?\s*(and|&)?\s*c-",
    _B + r"(pre|nativ)\s*(and|&|/|\+|und|u\.)\s*(post|kontrast|km)" + _E,
    _B + r"(ohne|sans|sin)\s*(und|et|y|/)\s*(mit|avec|con)" + _E,
]

#: Words that say a series (or study) has no intravenous contrast.
DEFAULT_NON_CONTRAST_PATTERNS: list[str] = [
    # "WO CONTRAST", "W/O IV CONTRAST", "WITHOUT CONTRAST", "NO CONTRAST", "OHNE KM",
    # "SANS INJECTION", "SIN CONTRASTE", "SENZA MDC", "ZONDER CONTRAST", "SEM CONTRASTE"
    _B
    + r"(w/o|wo|w\.o\.|without|no|non|sans|sin|ohne|senza|zonder|sem|kein|keine)[\s_.-]*"
    + _AGENT_NOUN
    + _E,
    _B + r"(w/o|wo|w\.o\.)" + _E,  # "CHEST W/O", "CT CHEST WO"
    _B + r"non[\s_-]?con" + _E,  # "NON CON", "NONCON", "NON-CON"
    _B + r"non[\s_-]?(contrast|enhanced)",
    _B + r"un[\s_-]?enhanced",
    _B + r"(nc|nect|ncct|c-)(?![^\W_]|\+)",  # "Routine Chest NC", "CHEST C-"
    _B + r"(plain|nativ|native|without)" + _E,  # "CT CHEST PLAIN", "Thorax nativ"
    _B + r"(hrct|ldct)" + _E,  # high-resolution and low-dose lung CT: never enhanced
    _B + r"lung[\s_-]*(cancer[\s_-]*)?screen",
    _B + r"pre[\s_-]*(contrast|kontrast|km|iv|injection)" + _E,  # the phase before injection
    # Japanese 単純 (plain) / 非造影, Korean 비조영, Chinese 平扫 / 非增强 (no word edges in CJK).
    r"(単純|非造影|비조영|평스캔|平扫|平掃|非增强|非強化)",
]

#: Words that say a series (or study) is enhanced by intravenous contrast.
DEFAULT_CONTRAST_PATTERNS: list[str] = [
    # "W CONTRAST", "W/ IV CONTRAST", "WITH CONTRAST", "MIT KM", "AVEC INJECTION",
    # "CON CONTRASTE", "COM CONTRASTE"
    _B + r"(w/?|with|mit|avec|con|com|met)[\s_.-]*" + _AGENT_NOUN + _E,
    _B + r"w/?(?![^\W_]|/)",  # "CT CHEST W", "CHEST W/"
    _B + r"with\s*$",
    _B + r"(iv[\s_-]*)?(contrast|contraste|contrasto|kontrast|kontrastmittel|km)" + _E,
    _B + r"(c\+|\+c)(?![^\W_])",  # "C+ CHEST", "CHEST +C"
    _B + r"(cta|ctpa|cect|mdcta|ce|enh)" + _E,  # "CE": contrast-enhanced; "ENH": enhanced
    r"angio",  # "ANGIO", "AngioTC", "angioscanner"
    _B + r"art[eé]ri(al|ell|el|elle|ale)?" + _E,  # "ARTERIAL", "arteriell", "artériel"
    _B + r"(portal|ven(ous|[oö]s|eux|euse|oso|osa)|portalven[oö]s)" + _E,
    _B + r"(delayed|late[\s_-]*phase|sp[aä]tphase|bolus)" + _E,
    _B + r"(pe|lae)" + _E,  # pulmonary embolism ("PE PROTOCOL"; German "LAE")
    r"embol",
    r"dissect",
    _B + r"triple[\s_-]*rule",
    # Not "(enhanced conversion)", which converters append for Legacy Converted Enhanced CT.
    _B + r"enhanced" + _E + r"(?!\s*conversion)",
    # Japanese/Chinese 造影 (contrast), Korean 조영, Chinese 增强 / 強化 (enhanced).
    r"(造影|조영|增强|増強|強化)",
    r"(omnipaque|isovue|visipaque|ultravist|imeron|iomeron|iopamiro|optiray|xenetix"
    r"|io(hexol|pamidol|dixanol|promide|versol|meprol|bitridol))",
]

#: Contrast/Bolus Agent (0018,0010) values that mean no agent (matched whole).
DEFAULT_NO_AGENT_PATTERNS: list[str] = [
    r"(none|none used|no|nil|n/?a|n\.a\.|-+|0|\.|not applicable|none given|no agent)",
    r"(no|non|w/o|without)[\s_-]*(iv[\s_-]*)?contrast",
    r"(kein|keine|ohne|aucun|aucune|sans|ninguno|ninguna|sin|nessuno|geen|nativ|native)"
    r"([\s_-]*(km|kontrast\w*|contraste|contrasto|produit de contraste|injection))?",
    # Oral contrast only: the blood pool is not enhanced.
    r"(oral|po|p\.o\.)([\s_-]*(contrast|kontrast\w*|contraste|contrasto|km))?( only)?",
]


class EligibilitySettings(_Section):
    """Which series are non-contrast chest CT (see ``agent.series.eligibility``).

    Patterns are case-insensitive regular expressions (``re.search``). Chest
    patterns are matched against Body Part Examined, Series Description,
    Protocol Name and Study Description; the contrast vocabulary
    (``mixed_patterns``, ``non_contrast_patterns``, ``contrast_patterns``)
    against Series Description, Protocol Name, Requested Procedure Description
    and Study Description, in that order of precedence; ``no_agent_patterns``
    must match the whole Contrast/Bolus Agent value; exclude patterns against
    the Series Description only (a protocol or study description is shared by
    every series of the study).
    """

    modalities: list[str] = ["CT"]
    sop_classes: list[str] = list(CT_SOP_CLASSES)
    chest_patterns: list[str] = [
        r"chest",
        r"thora",
        r"t[oó]ra[cx]",  # Italian "torace", Spanish/Portuguese "tórax"
        r"lung",
        r"\bthx\b",
        r"\bpulm",
        r"\bc\.a\.p\b",  # chest/abdomen/pelvis
        r"(胸部|肺|흉부|폐)",  # Japanese/Chinese chest, lung; Korean chest, lung
    ]
    mixed_patterns: list[str] = DEFAULT_MIXED_PATTERNS
    non_contrast_patterns: list[str] = DEFAULT_NON_CONTRAST_PATTERNS
    contrast_patterns: list[str] = DEFAULT_CONTRAST_PATTERNS
    no_agent_patterns: list[str] = DEFAULT_NO_AGENT_PATTERNS
    # The image check before screening: median attenuation of the blood pool.
    blood_pool_check: bool = True
    blood_pool_contrast_hu: Annotated[float, Field(ge=60, le=1000, strict=False)] = 120.0
    # Descriptions of series that are not primary axial images.
    exclude_patterns: list[str] = [
        r"scout",
        r"topo",
        r"locali[sz]er",
        r"surview",
        # Dose screens and reports, not "LOW DOSE CHEST" (lung screening is non-contrast chest CT).
        r"dose\s*(report|info|summary|screen)",
        r"patient protocol",
        r"\bmip\b",
        r"minip",
        r"\bvrt?\b",
        r"\bcor(onal)?\b",
        r"\bsag(ittal)?\b",
        r"report",
    ]
    # Every one of these must be among the Image Type values.
    required_image_type: list[str] = ["ORIGINAL", "AXIAL"]
    min_slice_thickness: Millimetres = 0.5
    max_slice_thickness: Millimetres = 3.0
    min_slices: Annotated[int, Field(ge=2)] = 64

    @model_validator(mode="after")
    def _ordered(self) -> EligibilitySettings:
        if self.max_slice_thickness < self.min_slice_thickness:
            raise Contradiction(
                "max_slice_thickness",
                f"{self.max_slice_thickness:g} is below min_slice_thickness"
                f" ({self.min_slice_thickness:g}): no series could be screened",
            )
        return self

    @field_validator(
        "chest_patterns",
        "mixed_patterns",
        "non_contrast_patterns",
        "contrast_patterns",
        "no_agent_patterns",
        "exclude_patterns",
    )
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from None
        return value
