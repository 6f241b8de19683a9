"""agent.toml validation: every problem is one line naming the file and the key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import DATABASE_URL_ENV, load_settings
from agent.errors import ConfigError
from agent.resources import default_config_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_packaged_default_matches_embedded_defaults() -> None:
    from agent.config import Settings

    settings = load_settings(default_config_path())
    embedded = Settings()
    for section in type(embedded).model_fields:
        if section not in ("storage", "database", "source"):  # paths resolve on load
            assert getattr(settings, section) == getattr(embedded, section), section
    assert settings.storage.min_free_bytes == embedded.storage.min_free_bytes
    assert settings.database.url.startswith("sqlite:////")  # resolved to an absolute path


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[node]\nport = 'x'\n", "[node].port"),
        ("[node]\nprot = 104\n", "[node].prot: unknown key"),
        ("[node]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n", "[node].ae_title"),
        ("[node.timeouts]\nacse = -1.0\n", "[node].timeouts.acse"),
        (
            "[[destinations]]\nname='p'\nae_title='P'\nhost='h'\nport=70000\n",
            "[[destinations]][1].port",
        ),
        ("[storage]\nmin_free_bytes = 1.5\n", "[storage].min_free_bytes"),
        ("[database]\nurl = 3\n", "[database].url"),
        ("[model]\ndevice = 'tpu'\n", "[model].device"),
        ("[logging]\nlevel = 'loud'\n", "[logging].level"),
        ("[reports]\nsummary_format = 'png'\n", "[reports].summary_format"),
        (
            "[reports]\nsummary_series_number = 9901\n",
            "[reports]: Value error, summary_series_number must differ",
        ),
        ("[surprise]\nx = 1\n", "[surprise]: unknown key"),
        ("[model]\ncheckpoint = 'no/such/file'\n", "[model].checkpoint"),
    ],
)
def test_bad_key_is_one_line_naming_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}")
    assert "\n" not in message


def test_duplicate_destination_names_refused(tmp_path: Path) -> None:
    dest = "[[destinations]]\nname='pacs'\nae_title='P'\nhost='127.0.0.1'\nport=104\n"
    with pytest.raises(ConfigError, match="duplicate destination name 'pacs'"):
        load_settings(write(tmp_path, dest + dest))


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[storage]\nroot = 'data'\n[database]\nurl = 'sqlite:///db/a.db'\n")
    settings = load_settings(path)
    assert settings.storage.root == tmp_path / "data"
    assert settings.database.url == f"sqlite:///{tmp_path}/db/a.db"


def test_environment_overrides_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg://u@127.0.0.1/x")
    settings = load_settings(write(tmp_path, "[database]\nurl = 'sqlite:///a.db'\n"))
    assert settings.database.url == "postgresql+psycopg://u@127.0.0.1/x"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[node\n"))
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "absent.toml")


def test_unreadable_file(tmp_path: Path) -> None:
    # A directory where the file should be: unreadable even for root, unlike chmod 000.
    path = tmp_path / "agent.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match=r"agent.toml: cannot read configuration"):
        load_settings(path)


def test_cli_exit_status_2_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nport = 'eleven'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"hyperct-agent: error: {path}: [node].port: Input should be a valid integer"]


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from agent import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hyperct-agent {__version__}"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[pipeline]\nclaim_timeout_seconds = 3600.0\n", "replaced by lease_seconds"),
        (
            "[pipeline]\nlease_seconds = 10\nlease_renew_seconds = 6\n",
            "lease_renew_seconds (6) must be at most half of lease_seconds (10)",
        ),
    ],
)
def test_lease_keys_refused_in_one_line(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [pipeline]") and says in message
    assert "\n" not in message
