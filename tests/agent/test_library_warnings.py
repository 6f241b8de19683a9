"""Library warnings join the structured log, their UIDs hashed like ours.

pydicom warns (and logs) about invalid values it parses, quoting them: an
invalid UID, or a name or date that is patient data. Those lines must be
JSON like every other and must never carry the value verbatim.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import pytest

from agent.logs import UidHasher, configure_logging, installation_uid_key
from tests.agent.pipeline_env import Serve, agent_config, tiny_checkpoint
from tests.agent.test_node import scu_send
from tests.support.ct_series import ct_series

INVALID_UID = "1.2.840.0123.4.5"  # a component with a leading zero (PS3.5 9.1)


def test_warnings_and_library_lines_are_json_with_values_hashed_or_removed() -> None:
    stream = io.StringIO()
    try:
        configure_logging("info", "json", stream=stream, uid_key=b"k" * 32)
        warnings.warn(
            f"Invalid value for VR UI: '{INVALID_UID}'. Please see the standard", stacklevel=1
        )
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'DOE^JANE'. Please see")
        logging.getLogger("pynetdicom.x").warning("peer 127.0.0.1 sent 1.2.3.4.5.abc")
    finally:
        configure_logging("warning", "console", stream=io.StringIO())
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]  # raises on any raw warning text
    token = UidHasher(b"k" * 32).token(INVALID_UID)
    assert events[0]["event"] == f"Invalid value for VR UI: '{token}'. Please see the standard"
    assert events[0]["category"] == "UserWarning" and events[0]["level"] == "warning"
    assert events[1]["event"] == "Invalid value for VR PN: '[removed]'. Please see"
    assert "127.0.0.1" in events[2]["event"] and "1.2.3.4.5.abc" not in events[2]["event"]
    assert INVALID_UID not in stream.getvalue() and "DOE^JANE" not in stream.getvalue()


@pytest.mark.slow
def test_serve_logs_only_json_and_an_invalid_uid_only_hashed(tmp_path: Path) -> None:
    [dataset] = ct_series(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this process warns too when the value is set
        dataset.SOPInstanceUID = INVALID_UID
    serve = Serve(agent_config(tmp_path, tiny_checkpoint(tmp_path)))
    try:
        # Parseable, but not a UID: pydicom warns as the node reads the command, and
        # the node refuses the instance.
        assert scu_send(serve.port, [dataset]) == [0xC212]
    finally:
        assert serve.stop() == 0
    text = "".join(serve.lines)
    events = [json.loads(line) for line in serve.lines]  # every line is JSON
    token = UidHasher(installation_uid_key(tmp_path / "storage")).token(INVALID_UID)
    assert INVALID_UID not in text
    warned = [e for e in events if e["logger"].startswith("py.warnings")]
    assert warned and all(token in e["event"] for e in warned)
