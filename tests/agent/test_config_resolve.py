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


def test_archive_tls_files_resolve_beside_the_config_and_are_checked(tmp_path: Path) -> None:
    from agent.errors import ConfigError

    path = tmp_path / "agent.toml"
    path.write_text(
        '[database]\nurl = "sqlite:///agent.db"\n'
        '[[archives]]\nname = "pacs"\nae_title = "PACS"\nhost = "pacs.example"\nport = 11112\n'
        'find_limit = 500\n[archives.tls]\nca_certificates = "pki/ca.pem"\n'
    )
    archive = load_settings(path, check_files=False).archive("pacs")
    assert archive.tls is not None and archive.tls.ca_certificates == tmp_path / "pki" / "ca.pem"
    assert archive.find_limit == 500
    # Loaded like a destination's: a missing file is one line naming the archive.
    with pytest.raises(ConfigError, match=r"\[\[archives\]\] 'pacs'\.tls"):
        load_settings(path)
