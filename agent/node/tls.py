"""DICOM TLS (PS3.15 B.1, the BCP 195 profiles): contexts for the listener and for SCUs.

TLS 1.2 is the floor and nothing older is negotiated, whatever the peer
offers. Every unreadable, missing or mismatched file becomes one
:class:`~agent.errors.ConfigError` line naming the key, raised at start.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from agent.config import DestinationTLS, NodeTLSSettings
from agent.errors import ConfigError


def _readable(key: str, path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{key}: {path}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}: {path}: not readable")
    return str(path)


def _context(purpose: ssl.Purpose) -> ssl.SSLContext:
    protocol = (
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def _load_chain(context: ssl.SSLContext, section: str, cert: Path, key: Path) -> None:
    cert_file = _readable(f"{section}.certificate", cert)
    key_file = _readable(f"{section}.private_key", key)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(
                f"{section}.private_key: {key} does not match the certificate {cert}"
            ) from None
        raise ConfigError(
            f"{section}: cannot load certificate {cert} and key {key}: {exc.reason or exc}"
        ) from None


def _load_cas(context: ssl.SSLContext, section: str, cas: Path) -> None:
    ca_file = _readable(f"{section}.ca_certificates", cas)
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{section}.ca_certificates: {cas}: no PEM certificate ({exc.reason or exc})"
        ) from None


def server_context(tls: NodeTLSSettings) -> ssl.SSLContext:
    """The listener's context: our certificate, and client certificates checked against the CAs."""
    section = "[node.tls]"
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError(f"{section}: certificate and private_key are required")
    context = _context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, section, tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        _load_cas(context, section, tls.ca_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(tls: DestinationTLS, section: str = "[[destinations]].tls") -> ssl.SSLContext:
    """An SCU's context for one destination: its CA, and our certificate if configured."""
    context = _context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = tls.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    _load_cas(context, section, tls.ca_certificates)
    if (tls.certificate is None) != (tls.private_key is None):
        raise ConfigError(f"{section}: certificate and private_key go together")
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(context, section, tls.certificate, tls.private_key)
    return context
