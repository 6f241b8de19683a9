"""Libraries patched in their internals are pinned, and another release is refused.

agent.node.transport replaces pynetdicom internals and hyperct_core.lora calls timm's
private Eva methods. The checks run where each patch is applied; here the version
attribute they read is changed, the checks themselves are the real ones.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pynetdicom
import pytest
import timm
from pynetdicom.transport import AssociationSocket

from agent.errors import AgentError
from agent.node import transport
from hyperct_core.errors import DependencyError, HyperCTError
from hyperct_core.lora import TIMM_VERSION
from tests.core.tiny_models import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].splitlines()
    reqs = [line.split("#")[0].strip() for line in lines]
    return {r.split("=")[0].split(">")[0].split("<")[0]: r for r in reqs if r}


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_setup_cfg_pins_what_the_checks_accept() -> None:
    reqs = _requirements()
    assert reqs["pynetdicom"] == f"pynetdicom=={transport.PYNETDICOM_SERIES}.*"
    assert reqs["timm"] == f"timm=={TIMM_VERSION}"


def test_constraints_pin_versions_the_checks_accept() -> None:
    pins = _constraints()
    assert pins["pynetdicom"].startswith(transport.PYNETDICOM_SERIES + ".")
    assert pins["timm"] == TIMM_VERSION


def test_installed_releases_pass() -> None:
    transport.check_pynetdicom_version()
    from hyperct_core.lora import check_timm_version

    check_timm_version()


@pytest.mark.parametrize("version", ["3.1.0", "2.0.2", "30.0.1"])
def test_node_refuses_another_pynetdicom_before_patching(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    sentinel = object()
    monkeypatch.setattr(transport, "_installed", False)
    monkeypatch.setattr(AssociationSocket, "recv", sentinel)
    monkeypatch.setattr(pynetdicom, "__version__", version)
    with pytest.raises(AgentError) as refused:
        transport.install_transport_tuning()
    message = str(refused.value)
    assert "\n" not in message
    assert f"pynetdicom {version} " in message
    assert AssociationSocket.recv is sentinel  # nothing was replaced
    assert transport._installed is False


def test_node_accepts_a_patch_release_of_the_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", transport.PYNETDICOM_SERIES + ".99")
    transport.check_pynetdicom_version()


@pytest.mark.parametrize("version", ["1.0.32", "1.0.20", "1.1.0"])
def test_model_refuses_another_timm(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    from hyperct_core.model import build_model

    monkeypatch.setattr(timm, "__version__", version)
    with pytest.raises(DependencyError) as refused:
        build_model(tiny_config(depth=1), random_backbone=True, seed=0)
    assert isinstance(refused.value, HyperCTError)  # the CLI prints it as one line
    message = str(refused.value)
    assert "\n" not in message
    assert f"timm {version} " in message


def test_model_builds_with_the_pinned_timm() -> None:
    from hyperct_core.model import build_model

    build_model(tiny_config(depth=1), random_backbone=True, seed=0)
