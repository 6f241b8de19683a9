"""Where the data files that ship beside the code live.

In a checkout (or an editable install) they sit at the repository's top level;
from a wheel they are installed under ``<prefix>/share/hyperct-agent``.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from functools import cache
from pathlib import Path

_SHARE = Path("share") / "hyperct-agent"


@cache
def data_root() -> Path:
    checkout = Path(__file__).resolve().parent.parent
    candidates = [checkout]
    for scheme_path in (sysconfig.get_path("data"), sys.prefix, sys.base_prefix):
        if scheme_path:
            candidates.append(Path(scheme_path) / _SHARE)
    user = sysconfig.get_path("data", f"{os.name}_user")
    if user:
        candidates.append(Path(user) / _SHARE)
    for root in candidates:
        if (root / "alembic" / "env.py").is_file() and (root / "agent.toml").is_file():
            return root
    raise FileNotFoundError(
        "hyperct-agent data files (alembic/, templates/, agent.toml) are missing: reinstall"
    )


def default_config_path() -> Path:
    return data_root() / "agent.toml"


def alembic_dir() -> Path:
    return data_root() / "alembic"


def templates_dir() -> Path:
    return data_root() / "templates"
