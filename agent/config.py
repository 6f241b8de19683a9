"""``agent.toml``: the agent's settings, validated once at start.

Every problem becomes one :class:`~agent.errors.ConfigError` line naming the
file and the key (``agent.toml: [node].port: ...``). Relative paths resolve
against the directory of the configuration file, so a configuration can be
moved together with its data.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import ConfigError
from agent.resources import default_config_path

DATABASE_URL_ENV = "HYPERCT_DATABASE_URL"

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]+$")]
Port = Annotated[int, Field(ge=0, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0, strict=False)]
# TOML has no path type: paths arrive as strings.
PathValue = Annotated[Path, Field(strict=False)]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Timeouts(_Section):
    acse: PositiveSeconds = 30.0
    dimse: PositiveSeconds = 60.0
    network: PositiveSeconds = 60.0
    connection: PositiveSeconds = 10.0


class NodeSettings(_Section):
    ae_title: AETitle = "HYPERCT"
    host: str = "127.0.0.1"
    port: Port = 11112
    allowed_calling_aets: list[AETitle] = []
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 10
    max_pdu: Annotated[int, Field(ge=0)] = 0
    timeouts: Timeouts = Timeouts()
    # Storage SOP classes accepted besides CT and Enhanced CT.
    extra_sop_classes: list[str] = []
    # What to do when a SOP Instance UID arrives again with different bytes.
    on_conflict: Literal["keep_first", "replace"] = "keep_first"

    @property
    def accepted_sop_classes(self) -> tuple[str, ...]:
        return (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, *self.extra_sop_classes)


class StorageSettings(_Section):
    root: PathValue = Path("var/storage")
    # Below this many free bytes the node answers 0xA700 (out of resources).
    min_free_bytes: Annotated[int, Field(ge=0)] = 1 << 30


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/hyperct.db"


class Destination(_Section):
    name: Annotated[str, Field(min_length=1)]
    ae_title: AETitle
    host: str
    port: Port


class ModelSettings(_Section):
    # Path to a checkpoint directory or file; empty means the bundled demo model.
    checkpoint: PathValue | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=64)] = 2


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class Settings(_Section):
    node: NodeSettings = NodeSettings()
    storage: StorageSettings = StorageSettings()
    database: DatabaseSettings = DatabaseSettings()
    destinations: list[Destination] = []
    model: ModelSettings = ModelSettings()
    logging: LoggingSettings = LoggingSettings()
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate destination name {dupes[0]!r}")
        return value

    def destination(self, name: str) -> Destination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"unknown destination {name!r} (known: {known})")


def _where(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``[section].key`` / ``[[destinations]][1].port``."""
    parts = [p for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    if not parts:
        return "(top level)"
    head, *rest = parts
    text = f"[[{head}]]" if head == "destinations" else f"[{head}]"
    for p in rest:
        text += f"[{p + 1}]" if isinstance(p, int) else f".{p}"
    return text


def load_settings(path: Path | str | None = None) -> Settings:
    """Read, validate and resolve a configuration file (the packaged default if None)."""
    cfg_path = Path(path) if path is not None else default_config_path()
    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cfg_path}: cannot read configuration: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(f"{cfg_path}: {_where(err['loc'])}: {msg}") from None
    return _resolve(settings, cfg_path)


def _resolve(settings: Settings, cfg_path: Path) -> Settings:
    base = cfg_path.resolve().parent
    user_config = cfg_path.resolve() != default_config_path().resolve()
    # The packaged default keeps its data in the working directory, not the install prefix.
    anchor = base if user_config else Path.cwd()
    storage = settings.storage.model_copy(update={"root": _abs(settings.storage.root, anchor)})
    url = os.environ.get(DATABASE_URL_ENV) or settings.database.url
    url = _resolve_sqlite(url, anchor)
    model = settings.model
    if model.checkpoint is not None:
        ckpt = _abs(model.checkpoint, anchor)
        if not ckpt.exists():
            raise ConfigError(f"{cfg_path}: [model].checkpoint: {ckpt} does not exist")
        if not os.access(ckpt, os.R_OK):
            raise ConfigError(f"{cfg_path}: [model].checkpoint: {ckpt} is not readable")
        model = model.model_copy(update={"checkpoint": ckpt})
    return settings.model_copy(
        update={
            "storage": storage,
            "database": DatabaseSettings(url=url),
            "model": model,
            "source": cfg_path,
        }
    )


def _abs(p: Path, anchor: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else (anchor / p)


def _resolve_sqlite(url: str, anchor: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        rel = url[len(prefix) :]
        if rel and rel != ":memory:":
            return prefix + str(anchor / rel)
    return url
