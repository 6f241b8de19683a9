"""Patient pseudonyms: keyed, stable, normalised, and the key created once."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.pseudonym import KEY_FILE, Pseudonymizer, load_pseudonymizer


def test_same_patient_same_pseudonym_other_key_other_pseudonym() -> None:
    a = Pseudonymizer(b"k" * 32)
    b = Pseudonymizer(b"j" * 32)
    assert a.patient(" 12345 ", "hospital a") == a.patient("12345", "HOSPITAL A")
    assert a.patient("12345", "A") != a.patient("12345", "B")
    assert a.patient("12345") != b.patient("12345")
    assert a.patient("") is None and a.accession("  ") is None
    # A patient ID and an accession number with the same text do not collide.
    assert a.patient("777") != a.accession("777")
    assert len(a.patient("12345") or "") == 64 and "12345" not in (a.patient("12345") or "")


def test_key_created_once_with_owner_only_mode(tmp_path: Path) -> None:
    first = load_pseudonymizer("", tmp_path)
    second = load_pseudonymizer("", tmp_path)
    assert first.key == second.key
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]


def _load(root: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(load_pseudonymizer("", Path(root)).key)


def test_processes_starting_together_share_one_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_load, args=(str(tmp_path), out)) for _ in range(6)]
    for p in procs:
        p.start()
    keys = {out.get(timeout=30) for _ in procs}
    for p in procs:
        p.join()
    assert len(keys) == 1


def test_a_damaged_key_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not hex")
    with pytest.raises(ConfigError, match="not a pseudonym key"):
        load_pseudonymizer("", tmp_path)
    assert (tmp_path / KEY_FILE).read_text() == "not hex"  # never replaced: studies keep linking
