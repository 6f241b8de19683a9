"""``agent.toml``: the agent's settings, validated once at start.

Every problem becomes one :class:`~agent.errors.ConfigError` line naming the
file and the key (``agent.toml: [node].port: ...``). Relative paths resolve
against the directory of the configuration file, so a configuration can be
moved together with its data.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from agent.config_backfill import Archive, BackfillSettings
from agent.config_base import (
    CT_IMAGE_STORAGE,
    CT_SOP_CLASSES,
    DATABASE_URL_ENV,
    ENHANCED_CT_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    AETitle,
    Contradiction,
    DestinationTLS,
    Fraction,
    Millimetres,
    PathValue,
    Port,
    PositiveSeconds,
)
from agent.config_base import Section as _Section
from agent.config_eligibility import (
    DEFAULT_CONTRAST_PATTERNS,
    DEFAULT_MIXED_PATTERNS,
    DEFAULT_NO_AGENT_PATTERNS,
    DEFAULT_NON_CONTRAST_PATTERNS,
    EligibilitySettings,
)
from agent.config_followup import MonitorSettings, OutcomeSettings, PatientSettings
from agent.config_resolve import SUPPORTED_DATABASES, check_tls_files, resolve_settings
from agent.errors import ConfigError
from agent.resources import default_config_path

# The settings models of every section, and the names the sections are built from.
__all__ = [
    "AETitle",
    "Archive",
    "BackfillSettings",
    "AuditSettings",
    "CT_IMAGE_STORAGE",
    "CT_SOP_CLASSES",
    "CompletenessSettings",
    "ConfigError",
    "Contradiction",
    "DATABASE_URL_ENV",
    "DEFAULT_CONTRAST_PATTERNS",
    "DEFAULT_MIXED_PATTERNS",
    "DEFAULT_NON_CONTRAST_PATTERNS",
    "DEFAULT_NO_AGENT_PATTERNS",
    "DatabaseSettings",
    "Destination",
    "DestinationTLS",
    "ENHANCED_CT_IMAGE_STORAGE",
    "EligibilitySettings",
    "Fraction",
    "LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE",
    "LoggingSettings",
    "MonitorSettings",
    "Millimetres",
    "ModelSettings",
    "NodeSettings",
    "NodeTLSSettings",
    "OutcomeSettings",
    "PatientSettings",
    "PBKDF2_MAX_ITERATIONS",
    "PBKDF2_MIN_ITERATIONS",
    "PathValue",
    "PipelineSettings",
    "Port",
    "PositiveSeconds",
    "ReferralSettings",
    "ReportSettings",
    "SUPPORTED_DATABASES",
    "Settings",
    "StorageSettings",
    "Timeouts",
    "WebSettings",
    "is_loopback_host",
    "load_settings",
    "parse_password_hash",
]


class Timeouts(_Section):
    acse: PositiveSeconds = 30.0
    dimse: PositiveSeconds = 60.0
    network: PositiveSeconds = 60.0
    connection: PositiveSeconds = 10.0
    # Before association: the whole A-ASSOCIATE-RQ, and on the TLS port the handshake
    # before it, must arrive within these, or the connection is dropped.
    association_request: PositiveSeconds = 5.0
    tls_handshake: PositiveSeconds = 5.0


class NodeTLSSettings(_Section):
    """``[node.tls]``: a DICOM TLS listener beside the plain one (PS3.15 B.1, TLS 1.2 or later).

    Paths are PEM files. ``ca_certificates`` is required when client
    certificates are verified; without ``require_client_certificate`` a client
    certificate is still checked against it when one is offered.
    """

    enabled: bool = False
    # 2762 is the port IANA assigns to DICOM over TLS (PS3.15 B.1).
    port: Port = 2762
    certificate: PathValue | None = None
    private_key: PathValue | None = None
    ca_certificates: PathValue | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _files_named(self) -> NodeTLSSettings:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("certificate and private_key are required when enabled")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates")
        return self


class NodeSettings(_Section):
    ae_title: AETitle = "HYPERCT"
    host: str = "127.0.0.1"
    port: Port = 11112
    allowed_calling_aets: list[AETitle] = []
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 10
    # Simultaneous associations one calling AE title may hold (None: only the overall limit).
    max_associations_per_ae: Annotated[int, Field(ge=1, le=1000)] | None = None
    # Connections still in their TLS handshake or A-ASSOCIATE-RQ, per listener and per
    # peer address; counted apart from associations.
    max_pending_connections: Annotated[int, Field(ge=1, le=10000)] = 64
    max_pending_per_address: Annotated[int, Field(ge=1, le=10000)] = 8
    # Largest dataset one C-STORE may carry; a peer sending more is aborted while
    # it sends, before the excess is buffered.
    max_dataset_bytes: Annotated[int, Field(ge=1024)] = 1 << 30
    # An image beyond these is refused at receive (0xC213), read from the header.
    max_frame_pixels: Annotated[int, Field(ge=1)] = 4096 * 4096  # Rows x Columns
    max_frames: Annotated[int, Field(ge=1)] = 4096  # Number of Frames of one instance
    max_pdu: Annotated[int, Field(ge=0)] = 0
    timeouts: Timeouts = Timeouts()
    # Storage SOP classes accepted besides the three CT image classes.
    extra_sop_classes: list[str] = []
    # What to do when a SOP Instance UID arrives again with different bytes.
    on_conflict: Literal["keep_first", "replace"] = "keep_first"
    tls: NodeTLSSettings = NodeTLSSettings()

    @model_validator(mode="after")
    def _consistent(self) -> NodeSettings:
        per_ae = self.max_associations_per_ae
        if per_ae is not None and per_ae > self.max_associations:
            raise Contradiction(
                "max_associations_per_ae",
                f"{per_ae} is above max_associations ({self.max_associations})",
            )
        if self.tls.enabled and self.port != 0 and self.tls.port == self.port:
            raise Contradiction("tls.port", f"{self.port} is also the plain DICOM port")
        return self

    @property
    def accepted_sop_classes(self) -> tuple[str, ...]:
        return (*CT_SOP_CLASSES, *self.extra_sop_classes)


class StorageSettings(_Section):
    root: PathValue = Path("var/storage")
    # Below this many free bytes the node answers 0xA700 (out of resources).
    min_free_bytes: Annotated[int, Field(ge=0)] = 1 << 30
    # Write instance files with O_DIRECT where the file system allows (probed at start).
    direct_io: bool = True


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/hyperct.db"
    # How long receiving one instance may wait for a database lock or statement;
    # beyond it the C-STORE is refused (0xC211) and the sender resends later.
    receive_timeout_seconds: PositiveSeconds = 10.0


class Destination(_Section):
    name: Annotated[str, Field(min_length=1)]
    ae_title: AETitle
    host: str
    port: Port
    tls: DestinationTLS | None = None


class ModelSettings(_Section):
    # Path to a checkpoint directory or file; empty means the bundled demo model.
    checkpoint: PathValue | None = None
    # auto, cpu, cuda or cuda:N (one GPU of several); checked against the machine at load.
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=64)] = 2

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,2})?", value):
            raise ValueError(f"{value[:40]!r} is not a device: use auto, cpu, cuda or cuda:N")
        return value


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"
    # UIDs in log lines are replaced by a keyed hash unless this is on (debugging only).
    raw_uids: bool = False
    # Key of that hash; empty: one generated per installation under the storage root.
    uid_hash_key: str = ""


class AuditSettings(_Section):
    """Where audit records go besides the database."""

    # RFC 5424 syslog of IHE ATNA / PS3.15 A.5 audit messages:
    # "udp://host:port" or "unix:///dev/log"; empty: none.
    syslog: str = ""

    @field_validator("syslog")
    @classmethod
    def _syslog_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"udp://[^/:]+:\d{1,5}|unix:///.+", value):
            raise ValueError("expected udp://HOST:PORT or unix:///PATH")
        return value


class CompletenessSettings(_Section):
    """When a series counts as complete (see ``agent.series.completeness``)."""

    # Judge a series once no instance has arrived for this long.
    idle_seconds: PositiveSeconds = 30.0
    # Stop waiting for missing slices after this long idle: record it as partial.
    force_seconds: PositiveSeconds = 600.0
    # A slice gap may differ from the median spacing by this fraction.
    spacing_tolerance: Fraction = 0.2
    # Minimum extent along the slice normal (a chest is ~250-350 mm).
    min_coverage_mm: Millimetres = 150.0
    # An instance arriving after its series was screened: record it only, or screen again.
    late_instances: Literal["record", "rescreen"] = "record"

    @model_validator(mode="after")
    def _ordered(self) -> CompletenessSettings:
        # Waiting for missing slices starts once the series is idle: it cannot end sooner.
        if self.force_seconds < self.idle_seconds:
            raise Contradiction(
                "force_seconds",
                f"{self.force_seconds:g} is below idle_seconds ({self.idle_seconds:g})",
            )
        return self


class PipelineSettings(_Section):
    """The scheduler inside ``serve``."""

    sweep_seconds: PositiveSeconds = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    # Base of the exponential backoff between attempts (doubling each time).
    retry_seconds: PositiveSeconds = 60.0
    # A claimed job is a lease: the worker renews it every ``lease_renew_seconds``
    # while it screens; a lease not renewed for ``lease_seconds`` (the worker died)
    # is taken over by any agent sharing the database.
    lease_seconds: PositiveSeconds = 120.0
    lease_renew_seconds: PositiveSeconds = 30.0
    # Memory one series may need while it is read and preprocessed, estimated from its
    # headers before any pixel is decoded; a series over it fails without retry.
    max_series_bytes: Annotated[int, Field(ge=1 << 20)] = 4 << 30

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # An agent.toml from before leases: say what replaces the key, not just "unknown".
        if isinstance(data, dict) and "claim_timeout_seconds" in data:
            raise ValueError(
                "claim_timeout_seconds is replaced by lease_seconds (default 120): claims "
                "are now renewed while a job runs; remove the key or rename it"
            )
        return data

    @model_validator(mode="after")
    def _renewed_within_lease(self) -> PipelineSettings:
        # At least two renewals per lease, so one late renewal does not lose the job.
        if self.lease_renew_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"lease_renew_seconds ({self.lease_renew_seconds:g}) must be at most half of "
                f"lease_seconds ({self.lease_seconds:g})"
            )
        return self


class ReferralSettings(_Section):
    """Which findings recommend a transthoracic echocardiogram, and at which thresholds.

    Empty ``tasks`` takes the model card's referral tasks; a threshold given
    here overrides the card's operating threshold for that task.
    """

    tasks: list[str] = []
    thresholds: dict[str, Fraction] = {}
    # One referral per patient episode: a new CT of a patient referred within
    # repeat_days says "previously recommended on DATE" (annotate) or does not
    # recommend again (suppress).
    repeat_days: Annotated[int, Field(ge=0, le=3650)] = 365
    repeat_mode: Literal["annotate", "suppress"] = "annotate"

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        _check_task_names(value)
        return value

    @field_validator("thresholds")
    @classmethod
    def _known_threshold_tasks(cls, value: dict[str, float]) -> dict[str, float]:
        _check_task_names(list(value))
        return value


class ReportSettings(_Section):
    """What goes back to PACS."""

    text_report: bool = True
    series_number: Annotated[int, Field(ge=1, le=2**31 - 1)] = 9901
    # A summary page for viewers that show only images (Secondary Capture), or as a PDF.
    summary_image: bool = True
    summary_format: Literal["secondary_capture", "pdf"] = "secondary_capture"
    summary_series_number: Annotated[int, Field(ge=1, le=2**31 - 1)] = 9902

    @model_validator(mode="after")
    def _own_series_number(self) -> ReportSettings:
        # The summary is in a series of its own; a shared number would confuse a viewer's list.
        if self.summary_image and self.summary_series_number == self.series_number:
            raise Contradiction(
                "summary_series_number", f"{self.series_number} is also series_number"
            )
        return self

    delivery_attempts: Annotated[int, Field(ge=1, le=1000)] = 20
    delivery_retry_seconds: PositiveSeconds = 30.0


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``.

    Anything else (``0.0.0.0``, ``::``, a hostname, an interface address) can be
    reached from other machines, or may be one day when DNS changes, so it
    counts as a network bind.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


# PBKDF2 iterations accepted in ``password_hash``: every failed login runs the
# hash once, so its cost is bounded as well as its strength.
PBKDF2_MIN_ITERATIONS = 1_000
PBKDF2_MAX_ITERATIONS = 2_000_000


def parse_password_hash(encoded: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of ``pbkdf2_sha256$ITERATIONS$SALT$HASH``; ValueError if not."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != "pbkdf2_sha256" or not re.fullmatch(r"[0-9]{1,9}", parts[1]):
        raise ValueError("password_hash is not pbkdf2_sha256$ITERATIONS$SALT$HASH")
    iterations = int(parts[1])
    if not PBKDF2_MIN_ITERATIONS <= iterations <= PBKDF2_MAX_ITERATIONS:
        raise ValueError(
            f"password_hash iterations {iterations} outside"
            f" {PBKDF2_MIN_ITERATIONS}..{PBKDF2_MAX_ITERATIONS}"
        )
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except binascii.Error:
        raise ValueError("password_hash salt or hash is not base64") from None
    if not salt or len(digest) != 32:
        raise ValueError("password_hash salt is empty or hash is not 32 bytes (SHA-256)")
    return iterations, salt, digest


class WebSettings(_Section):
    """The read-only dashboard, ``/metrics`` and ``/healthz`` served by ``serve``.

    HTTP Basic authentication is required whenever credentials are configured,
    and credentials are required for any bind that is not loopback. Give
    either ``password`` or ``password_hash`` (``pbkdf2_sha256$ITER$SALT$HASH``,
    made by ``python -m agent.web.auth``).
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 8080
    username: str | None = None
    password: str | None = None
    password_hash: str | None = None

    @model_validator(mode="after")
    def _credentials(self) -> WebSettings:
        secret = self.password is not None or self.password_hash is not None
        if self.password is not None and self.password_hash is not None:
            raise ValueError("give password or password_hash, not both")
        if secret != bool(self.username):
            raise ValueError("username and password (or password_hash) go together")
        if self.password_hash is not None:
            parse_password_hash(self.password_hash)
        if self.enabled and not secret and not is_loopback_host(self.host):
            raise ValueError(
                f"host {self.host!r} is not loopback: set username and password"
                " (or password_hash) to serve the dashboard on the network"
            )
        return self

    @property
    def has_credentials(self) -> bool:
        return bool(self.username)


def _check_task_names(names: list[str]) -> None:
    from hyperct_core.tasks import TASK_NAMES

    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}")


class Settings(_Section):
    node: NodeSettings = NodeSettings()
    storage: StorageSettings = StorageSettings()
    database: DatabaseSettings = DatabaseSettings()
    destinations: list[Destination] = []
    model: ModelSettings = ModelSettings()
    completeness: CompletenessSettings = CompletenessSettings()
    eligibility: EligibilitySettings = EligibilitySettings()
    pipeline: PipelineSettings = PipelineSettings()
    referral: ReferralSettings = ReferralSettings()
    reports: ReportSettings = ReportSettings()
    logging: LoggingSettings = LoggingSettings()
    audit: AuditSettings = AuditSettings()
    web: WebSettings = WebSettings()
    patients: PatientSettings = PatientSettings()
    outcomes: OutcomeSettings = OutcomeSettings()
    monitor: MonitorSettings = MonitorSettings()
    archives: list[Archive] = []
    backfill: BackfillSettings = BackfillSettings()
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate destination name {dupes[0]!r}")
        return value

    @field_validator("archives")
    @classmethod
    def _unique_archive_names(cls, value: list[Archive]) -> list[Archive]:
        names = [a.name for a in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate archive name {dupes[0]!r}")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        # Two listeners on one port: the second cannot bind, or worse, binds another address.
        if self.web.enabled and self.web.port != 0:
            taken = {"port": self.node.port}
            if self.node.tls.enabled:
                taken["tls.port"] = self.node.tls.port
            for key, port in taken.items():
                if port == self.web.port:
                    raise Contradiction("web.port", f"{port} is also [node].{key}")
        return self

    def archive(self, name: str) -> Archive:
        for archive in self.archives:
            if archive.name == name:
                return archive
        known = ", ".join(a.name for a in self.archives) or "none configured"
        raise ConfigError(f"unknown archive {name!r} (known: {known})")

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
    text = f"[[{head}]]" if head in ("destinations", "archives") else f"[{head}]"
    for p in rest:
        text += f"[{p + 1}]" if isinstance(p, int) else f".{p}"
    return text


def load_settings(path: Path | str | None = None, *, check_files: bool = True) -> Settings:
    """Read, validate and resolve a configuration file (the packaged default if None).

    Everything is checked before the caller does anything else: types and
    ranges, keys that contradict each other, the database URL's kind and, with
    ``check_files``, that the TLS certificates and keys named can be loaded
    (commands that only read the database skip those: an operator may not be
    allowed to read the node's private key, and need not).
    """
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
        msg, loc = err["msg"], tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, ValueError):
            msg = str(cause)  # without pydantic's "Value error, " prefix
        if isinstance(cause, Contradiction):
            loc += tuple(cause.key.split("."))
        raise ConfigError(f"{cfg_path}: {_where(loc)}: {msg}") from None
    settings = resolve_settings(settings, cfg_path)
    if check_files:
        check_tls_files(settings, cfg_path)
    return settings
