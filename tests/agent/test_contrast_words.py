"""The contrast decision from the tags: descriptions as scanners and sites write them.

Each row is one series as it arrives (series description, protocol name,
requested procedure, study description, Contrast/Bolus Agent) and the verdict
the tags must give: ``contrast`` (skipped before screening), ``non_contrast``
or ``unknown`` (screened if the image check agrees). Names follow the usual
conventions of GE (``AX 1.25 STND``), Siemens (``Thorax 1.0 Br40``,
``LUNG 1.0 B70f``), Philips (``Chest 2mm YB``), Canon/Toshiba (``FC52``), US
order names (``CT CHEST W/O CONTRAST``) and German, French, Spanish, Italian,
Dutch and Portuguese sites.
"""

from __future__ import annotations

import pytest

from agent.config import ConfigError, EligibilitySettings, Settings
from agent.series.eligibility import assess_eligibility, classify_words, contrast_by_tags
from tests.agent.series_cases import chest

S = EligibilitySettings()

N, C, U = "non_contrast", "contrast", "unknown"

# series description, protocol name, requested procedure, study description, agent, verdict
CASES: list[tuple[str | None, str | None, str | None, str | None, str | None, str]] = [
    # Series-level words alone.
    ("CT CHEST WO CONTRAST", None, None, None, None, N),
    ("CHEST WO IV CONTRAST", None, None, None, None, N),
    ("CT CHEST WITHOUT IV CONTRAST", None, None, None, None, N),
    ("CHEST W/O", None, None, None, None, N),
    ("CT CHEST W/O CONTRAST 1.25MM", None, None, None, None, N),
    ("Routine Chest NC", None, None, None, None, N),
    ("CHEST NON-CON 2.5", None, None, None, None, N),
    ("NONCON CHEST", None, None, None, None, N),
    ("CHEST C- 1.25 LUNG", None, None, None, None, N),
    ("CT CHEST PLAIN", None, None, None, None, N),
    ("Thorax nativ 1.0 Br40", None, None, None, None, N),
    ("CT THORAX OHNE KM", None, None, None, None, N),
    ("TDM THORAX SANS INJECTION", None, None, None, None, N),
    ("TC TORAX SIN CONTRASTE", None, None, None, None, N),
    ("TC TORACE SENZA MDC", None, None, None, None, N),
    ("CT THORAX ZONDER CONTRAST", None, None, None, None, N),
    ("TC TORAX SEM CONTRASTE", None, None, None, None, N),
    ("HRCT 1.0 B70f", None, None, None, None, N),
    ("LDCT LUNG SCREENING 1.25", None, None, None, None, N),
    ("Unenhanced chest 3mm", None, None, None, None, N),
    ("CTA CHEST PE PROTOCOL", None, None, None, None, C),
    ("CT CHEST W CONTRAST", None, None, None, None, C),
    ("CHEST W/ IV CONTRAST 2.5", None, None, None, None, C),
    ("CT CHEST WITH CONTRAST", None, None, None, None, C),
    ("C+ CHEST", None, None, None, None, C),
    ("CHEST +C 1.25", None, None, None, None, C),
    ("Thorax arteriell 1.0 Br40", None, None, None, None, C),
    ("Portal venous 3.0 B31f", None, None, None, None, C),
    ("Thorax venös 1.5 I30f", None, None, None, None, C),
    ("CT THORAX MIT KM", None, None, None, None, C),
    ("Thorax KM 1.0", None, None, None, None, C),
    ("TDM THORAX AVEC INJECTION", None, None, None, None, C),
    ("AngioTC TORAX", None, None, None, None, C),
    ("CT Thorax LAE", None, None, None, None, C),
    ("DELAYED CHEST 5MM", None, None, None, None, C),
    ("CT PULMONARY ANGIOGRAM", None, None, None, None, C),
    ("CTPA 1.0 Bv40", None, None, None, None, C),
    ("AORTA DISSECTION 1.0", None, None, None, None, C),
    # No contrast word anywhere: the image decides.
    ("Thorax 1.0 Br40", None, None, None, None, U),
    ("AX 1.25 STND", None, None, None, None, U),
    ("LUNG 1.0 B70f", None, None, None, None, U),
    ("Chest 2mm YB", None, None, None, None, U),
    ("CHEST 1.0 FC52", None, None, None, None, U),
    ("Recon 2: 1.25mm BONE", None, None, None, None, U),
    ("NECK CHEST 2.5 BRW", None, None, None, None, U),  # "NC"/"W" inside words
    ("SKM THORAX 1.0", None, None, None, None, U),  # "KM" inside a word
    ("C-SPINE THORAX 2.0", None, None, None, None, U),  # "C-" before a letter
    # Protocol names: series level, after the series description.
    ("Thorax 1.0 Br40", "ThoraxRoutine_nativ", None, None, None, N),
    ("Thorax 1.0 Br40", "CTA_Thorax", None, None, None, C),
    ("AX 1.25 STND", "5.1 CHEST W/O", None, None, None, N),
    ("Thorax nativ 1.0 Br40", "CTA_Thorax", None, None, None, N),  # series beats protocol
    ("Thorax arteriell 1.0", "ThoraxRoutine_nativ", None, None, None, C),
    # Study-level words apply when the series says nothing.
    ("Thorax 1.0 Br40", None, None, "CT CHEST W CONTRAST", None, C),
    ("AX 1.25 STND", None, None, "CT CHEST WO CONTRAST", None, N),
    ("AX 1.25 STND", None, "CT CHEST W/O IV CONTRAST", "CT CHEST", None, N),
    ("AX 1.25 STND", None, "CT ANGIO CHEST PE", "CT CHEST", None, C),
    # Series-level words beat study-level words.
    ("CHEST WO 2.5", None, None, "CT CHEST W CONTRAST", None, N),
    ("Portal venous 3.0", None, None, "CT CHEST WO CONTRAST", None, C),
    ("Thorax nativ 1.0", None, "CTA THORAX", "CTA THORAX", None, N),
    # Mixed: the study has both; the series decides, else the image.
    ("Thorax 1.0 Br40", None, None, "CT CHEST W/WO CONTRAST", None, U),
    ("AX 1.25 STND", None, "CT CHEST W AND WO CONTRAST", "CT CHEST", None, U),
    ("AX 1.25 STND", None, None, "CT CHEST WITH AND WITHOUT CONTRAST", None, U),
    ("Thorax 1.0 Br40", "CHEST W/WO", None, "CT CHEST W CONTRAST", None, U),
    ("CHEST WO 2.5", None, None, "CT CHEST W/WO CONTRAST", None, N),
    ("CHEST W CONTRAST 2.5", None, None, "CT CHEST W/WO CONTRAST", None, C),
    ("Thorax arteriell", None, None, "CT THORAX NATIV UND KM", None, C),
    # Contrast/Bolus Agent (0018,0010).
    ("Thorax 1.0 Br40", None, None, None, "IOPAMIDOL 370", C),
    ("Thorax 1.0 Br40", None, None, None, "Omnipaque 350", C),
    ("CHEST WO 2.5", None, None, None, "ULTRAVIST 370", C),  # an agent named beats words
    ("Thorax 1.0 Br40", None, None, None, "NONE", N),
    ("Thorax 1.0 Br40", None, None, None, "No contrast", N),
    ("Thorax 1.0 Br40", None, None, None, "N/A", N),
    ("Thorax 1.0 Br40", None, None, None, "0", N),
    ("Thorax 1.0 Br40", None, None, None, "-", N),
    ("Thorax 1.0 Br40", None, None, None, "KEIN KM", N),
    ("Thorax 1.0 Br40", None, None, None, "AUCUN", N),
    ("Thorax 1.0 Br40", None, None, None, "NINGUNO", N),
    ("Thorax 1.0 Br40", None, None, None, "ORAL CONTRAST", N),
    ("Thorax 1.0 Br40", None, None, None, "   ", U),  # blank is absent
    # An agent saying none is series level: it beats study words, not series words.
    ("Thorax 1.0 Br40", None, None, "CT CHEST W CONTRAST", "NONE", N),
    ("Thorax arteriell", None, None, None, "NONE", C),
    # Phases and abbreviations sites use.
    ("CT CHEST PRE CONTRAST", None, None, None, None, N),
    ("Body 2.0 CE", None, None, "CE CT THORAX", None, C),
    ("THORAX 1.0 CE", None, None, None, None, C),
    ("CT CHEST ENH 2.5", None, None, None, None, C),
    ("TORACE SENZA MDC", None, None, None, None, N),
    # Japanese (単純 plain, 造影 contrast), Korean (비조영 / 조영), Chinese (平扫 / 增强).
    ("胸部単純CT 1.0", None, None, None, None, N),
    ("Thorax 1.0 FC13", None, None, "胸部造影CT", None, C),
    ("흉부 CT 비조영", None, None, None, None, N),
    ("흉부 CT 조영", None, None, None, None, C),
    ("胸部CT平扫 1.25", None, None, None, None, N),
    ("胸部CT增强 动脉期", None, None, None, None, C),
]


@pytest.mark.parametrize(
    ("series", "protocol", "requested", "study", "agent", "verdict"),
    CASES,
    ids=[f"{c[0]}|{c[1]}|{c[2]}|{c[3]}|{c[4]}" for c in CASES],
)
def test_contrast_verdict_from_the_tags(
    series: str | None,
    protocol: str | None,
    requested: str | None,
    study: str | None,
    agent: str | None,
    verdict: str,
) -> None:
    facts = chest(
        series_description=series,
        protocol_name=protocol,
        requested_procedure=requested,
        study_description=study,
        contrast_agent=agent,
    )
    tags = contrast_by_tags(facts, S)
    assert tags.verdict == verdict, tags.detail
    check = next(c for c in assess_eligibility(facts, S).checks if c.name == "non_contrast")
    assert check.passed is (verdict != C)
    assert check.detail == tags.detail


def test_the_table_is_large_and_covers_every_verdict() -> None:
    assert len(CASES) >= 40
    assert {c[-1] for c in CASES} == {N, C, U}


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("WO CONTRAST", "non_contrast"),  # holds "CONTRAST": the explicit negation wins
        ("NON-CONTRAST", "non_contrast"),
        ("W/WO", "mixed"),
        ("W/O", "non_contrast"),
        ("W/", "contrast"),
        ("C-/C+", "mixed"),
        ("C-", "non_contrast"),
        ("C+", "contrast"),
        ("chest_wo_contrast", "non_contrast"),  # underscores are word edges
    ],
)
def test_word_kinds(text: str, kind: str) -> None:
    found = classify_words(text, S)
    assert found is not None and found[0] == kind


def test_a_site_adds_its_own_word() -> None:
    """Lists are data: a site's word for unenhanced ("BASALE") counts once added."""
    facts = chest(series_description="TC TORACE BASALE", protocol_name=None,
                  study_description=None)  # fmt: skip
    assert contrast_by_tags(facts, S).verdict == U
    site = EligibilitySettings(non_contrast_patterns=[*S.non_contrast_patterns, r"\bbasale\b"])
    assert contrast_by_tags(facts, site).verdict == N


@pytest.mark.parametrize(
    "key", ["mixed_patterns", "non_contrast_patterns", "contrast_patterns", "no_agent_patterns"]
)
def test_a_bad_regex_is_refused_naming_the_key(key: str, tmp_path: object) -> None:
    from pathlib import Path

    from agent.config import load_settings

    path = Path(str(tmp_path)) / "agent.toml"
    path.write_text(f"[eligibility]\n{key} = ['(unclosed']\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert f"[eligibility].{key}" in message and "\n" not in message


def test_the_image_threshold_is_validated() -> None:
    with pytest.raises(ValueError, match="blood_pool_contrast_hu"):
        Settings.model_validate({"eligibility": {"blood_pool_contrast_hu": 20}})


@pytest.mark.parametrize(
    ("description", "is_chest"),
    [
        ("TORACE SENZA MDC", True),
        ("TC TÓRAX SIN CONTRASTE", True),
        ("胸部単純CT", True),
        ("흉부 CT 비조영", True),
        ("C.A.P. W/ CONTRAST", True),
        ("CT HEAD WO", False),
        ("頭部単純CT", False),
        ("ABDOMEN PELVIS 5.0", False),
    ],
)
def test_chest_words_across_languages(description: str, is_chest: bool) -> None:
    facts = chest(series_description=description, body_part_examined=None, protocol_name=None,
                  study_description=None)  # fmt: skip
    [check] = [c for c in assess_eligibility(facts, S).checks if c.name == "chest"]
    assert check.passed is is_chest, check.detail
