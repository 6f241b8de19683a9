"""agent.toml validation: every problem is one line naming the file and the key, exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

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
            "[reports].summary_series_number: 9901 is also series_number",
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


def _serve(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``serve`` as a service manager starts it; a configuration error must stop it at once."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://x", "unsupported database 'mysql': use sqlite:///PATH or postgresql://"),
        ("mysql+pymysql://u:secret@h/db", "unsupported database 'mysql+pymysql'"),
        ("postgresql+psycopg2://u@h/db", "unsupported driver 'postgresql+psycopg2'"),
        ("x", "not a database URL"),
        ("postgres://u@h/db", "unsupported database 'postgres'"),
    ],
)
def test_unsupported_database_url_is_exit_2_naming_file_and_key(
    tmp_path: Path, url: str, says: str
) -> None:
    path = write(tmp_path, f'[database]\nurl = "{url}"\n')
    proc = _serve(path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"hyperct-agent: error: {path}: [database].url: {says}")
    assert "secret" not in proc.stderr


def test_unsupported_database_url_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "oracle://scott:tiger@h/db")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, ""))
    assert str(info.value).startswith(f"{DATABASE_URL_ENV}: unsupported database 'oracle'")
    assert "tiger" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "[eligibility]\nmin_slice_thickness = 5\nmax_slice_thickness = 1\n",
            "[eligibility].max_slice_thickness: 1 is below min_slice_thickness (5)",
        ),
        (
            "[completeness]\nidle_seconds = 60\nforce_seconds = 30\n",
            "[completeness].force_seconds: 30 is below idle_seconds (60)",
        ),
        (
            "[node]\nmax_associations = 4\nmax_associations_per_ae = 5\n",
            "[node].max_associations_per_ae: 5 is above max_associations (4)",
        ),
        (
            "[node]\nport = 2762\n[node.tls]\nenabled = true\n"
            "certificate = 'c'\nprivate_key = 'k'\n",
            "[node].tls.port: 2762 is also the plain DICOM port",
        ),
        ("[web]\nenabled = true\nport = 11112\n", "[web].port: 11112 is also [node].port"),
        (
            "[reports]\nseries_number = 7\nsummary_series_number = 7\n",
            "[reports].summary_series_number: 7 is also series_number",
        ),
        (
            "[[destinations]]\nname='p'\nae_title='P'\nhost='h'\nport=104\n"
            "[destinations.tls]\nca_certificates='ca.pem'\nprivate_key='k.pem'\n",
            "[[destinations]][1].tls.certificate: certificate and private_key go together",
        ),
    ],
)
def test_keys_that_contradict_each_other_are_refused(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, check_files=False)
    assert str(info.value).startswith(f"{path}: {where}")
    assert "\n" not in str(info.value)


def test_equal_limits_and_ports_that_are_picked_at_start_are_accepted(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            "[eligibility]\nmin_slice_thickness = 2\nmax_slice_thickness = 2\n"
            "[completeness]\nidle_seconds = 30\nforce_seconds = 30\n"
            "[node]\nport = 0\nmax_associations = 3\nmax_associations_per_ae = 3\n"
            "[web]\nenabled = true\nport = 0\n"
            "[reports]\nsummary_image = false\nsummary_series_number = 9901\n",
        )
    )
    assert settings.eligibility.max_slice_thickness == 2.0
    assert settings.web.port == settings.node.port == 0


def test_serve_refuses_a_contradiction_before_any_output(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[database]\nurl = "sqlite:///{tmp_path}/a.db"\n'
        "[eligibility]\nmin_slice_thickness = 5\nmax_slice_thickness = 1\n",
    )
    proc = _serve(path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"hyperct-agent: error: {path}: [eligibility].max_slice_thickness: 1 is below "
        "min_slice_thickness (5): no series could be screened"
    ]
    assert not (tmp_path / "a.db").exists()  # nothing was started, not even the database


def test_a_missing_tls_certificate_stops_serve_before_any_output(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[database]\nurl = "sqlite:///{tmp_path}/a.db"\n[storage]\nroot = "store"\n'
        "[node]\nport = 0\n[node.tls]\nenabled = true\nport = 0\n"
        'certificate = "tls/missing.pem"\nprivate_key = "tls/missing.key"\n',
    )
    proc = _serve(path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"hyperct-agent: error: {path}: [node.tls].certificate: "
        f"{tmp_path}/tls/missing.pem: no such file"
    ]
    assert not (tmp_path / "store").exists()


def test_commands_that_only_read_the_database_do_not_need_the_tls_files(
    tmp_path: Path, sqlite_engine: object
) -> None:
    path = write(
        tmp_path,
        f'[database]\nurl = "sqlite:///{tmp_path}/agent.db"\n'
        '[node.tls]\nenabled = true\ncertificate = "absent.pem"\nprivate_key = "absent.key"\n',
    )
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(path)
    assert main(["status", "--json", "--config", str(path)]) == 0


def _readme_keys() -> set[str]:
    """``[section] key`` for every key README's configuration table lists."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for cell in re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE):
        section, _, names = cell.partition("] ")
        section = section.strip("[]")
        if not names:  # a table of its own: "[referral.thresholds]"
            section, _, names = section.rpartition(".")
        keys.update(f"[{section}] {n.strip()}" for n in names.split(","))
    return keys


def _model_keys(model: type[BaseModel], section: str) -> set[str]:
    """``[section] key`` for every leaf key of ``model`` (sub-tables as ``[a.b] key``)."""
    keys = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        inner = _inner_model(field.annotation)
        if inner is not None:
            keys |= _model_keys(inner, f"{section}.{name}" if section else name)
        else:
            keys.add(f"[{section}] {name}")
    return keys


def _inner_model(annotation: object) -> type[BaseModel] | None:
    """The model a field holds: itself, in a list, or optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _inner_model(arg)) is not None:
            return found
    return None


def test_readme_configuration_table_lists_every_key() -> None:
    from agent.config import Settings

    documented = _readme_keys()
    expected = _model_keys(Settings, "")
    assert sorted(expected - documented) == []
    assert sorted(documented - expected) == []


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
