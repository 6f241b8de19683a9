"""Building blocks of the settings models: value types, the section base, SOP classes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

DATABASE_URL_ENV = "HYPERCT_DATABASE_URL"

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]+$")]
Port = Annotated[int, Field(ge=0, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0, strict=False)]
# TOML has no path type: paths arrive as strings.
PathValue = Annotated[Path, Field(strict=False)]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
# What PACS and converters make of a single-frame CT series as one multi-frame object (A.70).
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
)


Fraction = Annotated[float, Field(ge=0, le=1, strict=False)]
Millimetres = Annotated[float, Field(ge=0, strict=False)]


class Section(BaseModel):
    """A table of ``agent.toml``: unknown keys refused, values not coerced, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Contradiction(ValueError):
    """Two keys of one section that cannot both hold; ``key`` is the one reported."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class DestinationTLS(Section):
    """TLS for associations to one destination (PS3.15 B.1): the CA that signs its
    certificate and, where it asks for one, this node's client certificate."""

    ca_certificates: PathValue
    certificate: PathValue | None = None
    private_key: PathValue | None = None
    # Check that the destination's certificate names ``host``.
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> DestinationTLS:
        if (self.certificate is None) != (self.private_key is None):
            raise Contradiction(
                "certificate" if self.certificate is None else "private_key",
                "certificate and private_key go together",
            )
        return self
