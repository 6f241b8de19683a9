"""DICOM TLS on the node (reliability row 3): only TLS 1.2+ with a trusted client certificate.

Every refused handshake leaves nothing stored and a security-alert audit row,
and the node then still answers C-ECHO and C-STORE over TLS.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from agent.config import DestinationTLS, NodeTLSSettings
from agent.errors import ConfigError
from agent.node.tls import client_context as destination_context
from agent.node.tls import server_context
from storage.models import AuditEvent
from tests.agent.conftest import DCMTK_ENV, NODE_AET, NodeUnderTest, dcmtk, start_test_node
from tests.agent.security_support import (
    Pki,
    client_context,
    closed_by_peer,
    echo,
    make_pki,
    raw_connect,
    store_one,
    tls_settings,
    wait_for_no_associations,
)
from tests.support.ct_series import ct_series, write_series


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_node(tmp_path: Path, sqlite_engine: Engine, pki: Pki) -> Iterator[NodeUnderTest]:
    running = start_test_node(
        tmp_path, sqlite_engine, tls=tls_settings(pki), timeouts={"network": 3, "acse": 3}
    )
    yield running
    running.node.stop()
    running.store.close()


def _tls_port(node: NodeUnderTest) -> int:
    port = node.node.tls_port
    assert port is not None and port != node.port
    return port


def _alerts(node: NodeUnderTest, expected: int = 0) -> list[str]:
    """Security-alert reasons, waiting a little for ``expected`` (written by the server thread)."""
    deadline = time.monotonic() + 5
    while True:
        with node.sessions() as s:
            rows = s.scalars(
                select(AuditEvent).where(AuditEvent.event_type == "security_alert")
            ).all()
            reasons = [str((r.detail or {}).get("reason")) for r in rows]
        if len(reasons) >= expected or time.monotonic() > deadline:
            return reasons
        time.sleep(0.05)


def _still_serving(node: NodeUnderTest, pki: Pki, seed: int) -> None:
    context = client_context(pki)
    assert echo(_tls_port(node), context) == 0x0000
    assert store_one(_tls_port(node), context, seed=seed) == 0x0000
    assert echo(node.port) == 0x0000  # the plain listener beside it


def test_trusted_client_echoes_and_stores_over_tls(tls_node: NodeUnderTest, pki: Pki) -> None:
    _still_serving(tls_node, pki, seed=1)
    assert tls_node.counts() == (1, 1)
    assert _alerts(tls_node) == []


def test_plain_client_on_the_tls_port_is_refused(tls_node: NodeUnderTest, pki: Pki) -> None:
    assert echo(_tls_port(tls_node)) is None
    assert tls_node.counts() == (0, 0)
    assert len(_alerts(tls_node, 1)) == 1
    assert wait_for_no_associations(tls_node.node.ae)
    _still_serving(tls_node, pki, seed=2)


def test_tls_1_1_is_refused(tls_node: NodeUnderTest, pki: Pki) -> None:
    context = client_context(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with contextlib.suppress(ssl.SSLError):
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    sock = raw_connect(_tls_port(tls_node))
    with pytest.raises((ssl.SSLError, OSError)):
        context.wrap_socket(sock, server_hostname="localhost")
    sock.close()
    assert tls_node.counts() == (0, 0)
    assert len(_alerts(tls_node, 1)) == 1
    _still_serving(tls_node, pki, seed=3)


def test_missing_client_certificate_is_refused(tls_node: NodeUnderTest, pki: Pki) -> None:
    assert echo(_tls_port(tls_node), client_context(pki, cert=False)) is None
    assert store_one(_tls_port(tls_node), client_context(pki, cert=False)) is None
    assert tls_node.counts() == (0, 0)
    assert len(_alerts(tls_node, 2)) == 2
    _still_serving(tls_node, pki, seed=4)


def test_untrusted_client_certificate_is_refused(tls_node: NodeUnderTest, pki: Pki) -> None:
    context = client_context(pki, cert=False)
    context.load_cert_chain(str(pki.rogue_cert), str(pki.rogue_key))
    assert store_one(_tls_port(tls_node), context) is None
    assert tls_node.counts() == (0, 0)
    [reason] = _alerts(tls_node, 1)
    assert "CERTIFICATE" in reason.upper()
    _still_serving(tls_node, pki, seed=5)


def test_silent_tls_client_does_not_block_others(tls_node: NodeUnderTest, pki: Pki) -> None:
    # pynetdicom would run this handshake in its accept loop and stall everyone.
    silent = raw_connect(_tls_port(tls_node))
    try:
        assert echo(_tls_port(tls_node), client_context(pki)) == 0x0000
        assert closed_by_peer(silent, within=10) is not None  # network timeout: 3 s
    finally:
        silent.close()


def test_optional_client_certificate(tmp_path: Path, sqlite_engine: Engine, pki: Pki) -> None:
    running = start_test_node(tmp_path, sqlite_engine, tls=tls_settings(pki, require=False))
    try:
        port = running.node.tls_port
        assert port is not None
        assert echo(port, client_context(pki, cert=False)) == 0x0000
        # offered, a certificate is still verified
        rogue = client_context(pki, cert=False)
        rogue.load_cert_chain(str(pki.rogue_cert), str(pki.rogue_key))
        assert echo(port, rogue) is None
    finally:
        running.node.stop()


# -- DCMTK as the TLS peer -------------------------------------------------------


def _dcmtk_tls(pki: Pki) -> list[str]:
    return ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]


def test_dcmtk_echoscu_and_storescu_over_tls(
    tls_node: NodeUnderTest, pki: Pki, tmp_path: Path
) -> None:
    port = str(_tls_port(tls_node))
    proc = subprocess.run(
        [dcmtk("echoscu"), *_dcmtk_tls(pki), "-aet", "PACS", "-aec", NODE_AET, "127.0.0.1", port],
        capture_output=True, text=True, timeout=60, env=DCMTK_ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = write_series(ct_series(4, seed=7), tmp_path / "in")
    proc = subprocess.run(
        [dcmtk("storescu"), *_dcmtk_tls(pki), "-aet", "PACS", "-aec", NODE_AET,
         "127.0.0.1", port, *map(str, files)],
        capture_output=True, text=True, timeout=120, env=DCMTK_ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert tls_node.counts() == (4, 1)
    # without a client certificate DCMTK is refused (anonymous TLS)
    proc = subprocess.run(
        [dcmtk("echoscu"), "+tla", "+cf", str(pki.ca), "-aet", "PACS", "-aec", NODE_AET,
         "127.0.0.1", port],
        capture_output=True, text=True, timeout=60, env=DCMTK_ENV,
    )  # fmt: skip
    assert proc.returncode != 0


# -- configuration errors: one line each ------------------------------------------


def _node_tls(pki: Pki, **changes: object) -> NodeTLSSettings:
    return NodeTLSSettings.model_validate({**tls_settings(pki), **changes})


def test_missing_unreadable_and_mismatched_files_are_one_line(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[node.tls\].certificate: .*no such file"):
        server_context(_node_tls(pki, certificate=str(tmp_path / "absent.pem")))
    with pytest.raises(ConfigError, match=r"\[node.tls\].private_key: .* does not match"):
        server_context(_node_tls(pki, private_key=str(pki.client_key)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"\[node.tls\].ca_certificates"):
        server_context(_node_tls(pki, ca_certificates=str(garbage)))
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.key"
        locked.write_bytes(pki.server_key.read_bytes())
        locked.chmod(0)
        with pytest.raises(ConfigError, match="not readable"):
            server_context(_node_tls(pki, private_key=str(locked)))
    for err in (ConfigError,):
        with pytest.raises(err, match="no such file"):
            destination_context(DestinationTLS(ca_certificates=tmp_path / "none.pem"))


def test_start_refuses_before_listening(tmp_path: Path, sqlite_engine: Engine, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="does not match"):
        start_test_node(
            tmp_path,
            sqlite_engine,
            tls={**tls_settings(pki), "private_key": str(pki.client_key)},
        )


def test_outgoing_association_over_tls(tls_node: NodeUnderTest, pki: Pki) -> None:
    # The SCU side of agent.send: the destination's CA and this node's client certificate.
    context = destination_context(
        DestinationTLS(
            ca_certificates=pki.ca, certificate=pki.client_cert, private_key=pki.client_key
        )
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert echo(_tls_port(tls_node), context) == 0x0000
    assert (
        echo(_tls_port(tls_node), destination_context(DestinationTLS(ca_certificates=pki.ca)))
        is None
    )


def test_tls_settings_in_agent_toml(tmp_path: Path, pki: Pki) -> None:
    from agent.config import load_settings

    config = tmp_path / "agent.toml"
    config.write_text("[node.tls]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r"\[node\].tls: .*certificate and private_key"):
        load_settings(config)
    (tmp_path / "tls").mkdir()
    for src in (pki.server_cert, pki.server_key, pki.ca):
        (tmp_path / "tls" / src.name).write_bytes(src.read_bytes())
    config.write_text(
        '[node.tls]\nenabled = true\ncertificate = "tls/server.pem"\n'
        'private_key = "tls/server.key"\nca_certificates = "tls/ca.pem"\n'
        "require_client_certificate = true\n"
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "localhost"\nport = 2762\n'
        '[destinations.tls]\nca_certificates = "tls/ca.pem"\n'
    )
    settings = load_settings(config)
    assert settings.node.tls.certificate == tmp_path / "tls" / "server.pem"  # relative to the file
    assert settings.destinations[0].tls is not None
    assert settings.destinations[0].tls.ca_certificates == tmp_path / "tls" / "ca.pem"
    assert server_context(settings.node.tls).verify_mode == ssl.CERT_REQUIRED
