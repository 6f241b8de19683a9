"""What load_settings resolves after validation keeps every other key of its section."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DATABASE_URL_ENV, load_settings


@pytest.mark.parametrize("from_env", [False, True])
def test_database_keys_survive_url_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_env: bool
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[database]\nurl = "sqlite:///agent.db"\nreceive_timeout_seconds = 1.5\n')
    if from_env:
        monkeypatch.setenv(DATABASE_URL_ENV, "sqlite:///other.db")
    else:
        monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    database = load_settings(path).database
    assert database.receive_timeout_seconds == 1.5
    name = "other.db" if from_env else "agent.db"
    assert database.url == f"sqlite:///{tmp_path / name}"
