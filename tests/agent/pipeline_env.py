"""An agent under test as a real ``serve`` process, with a small checkpoint and fast timers."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.netns import NetNS

ROOT = Path(__file__).resolve().parents[2]


def tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A random small HyperCT checkpoint that takes 144 px images (fast on CPU)."""
    from hyperct_core.backbone import BackboneConfig
    from hyperct_core.checkpoint import make_card, save_checkpoint
    from hyperct_core.hypernet import HyperNetConfig
    from hyperct_core.model import HyperCTConfig, build_model

    config = HyperCTConfig(
        BackboneConfig(embed_dim=64, depth=2, num_heads=2, img_size=144),
        HyperNetConfig(head_input_size=128),
        lora_scale=1.0,
    )
    model = build_model(config, random_backbone=True, seed=seed)
    path = folder / "checkpoint"
    save_checkpoint(model, make_card(model, name="hyperct-test", version="0.0.1"), path)
    return path


def chest_series(folder: Path, seed: int = 0, **kwargs: Any) -> list[Path]:
    """An eligible non-contrast chest CT phantom: 2.5 mm slices over 320 mm."""
    from hyperct_core import phantoms

    spec = kwargs.pop("spec", None) or phantoms.PhantomSpec()
    return phantoms.write_dicom_series(
        spec,
        folder,
        rng=np.random.default_rng(seed),
        spacing=(2.5, 2.5, 2.5),
        shape=(128, 128, 128),
        **kwargs,
    )


def agent_config(
    folder: Path,
    checkpoint: Path,
    destinations: Sequence[tuple[str, str, str, int]] = (),
    database: str | None = None,
    extra: str = "",
    completeness: str = "",
    storage_root: Path | None = None,
) -> Path:
    """A config for :class:`Serve`; ``extra`` adds tables, ``completeness`` keys of that table.

    ``storage_root``: one root shared by several agents (as on a shared volume); by
    default each config has its own ``storage`` beside it.
    """
    dests = "".join(
        f'[[destinations]]\nname = "{n}"\nae_title = "{aet}"\nhost = "{h}"\nport = {p}\n'
        for n, aet, h, p in destinations
    )
    path = folder / "agent.toml"
    path.write_text(
        f'[node]\nport = 0\n[storage]\nroot = "{storage_root or "storage"}"\nmin_free_bytes = 0\n'
        f'[database]\nurl = "{database or "sqlite:///agent.db"}"\n'
        f'[model]\ncheckpoint = "{checkpoint}"\ndtype = "float32"\n'
        f"[completeness]\nidle_seconds = 1.0\nforce_seconds = 4.0\n{completeness}"
        f"[pipeline]\nsweep_seconds = 0.5\nretry_seconds = 1.0\n"
        f"[reports]\ndelivery_retry_seconds = 0.5\n"
        f'[logging]\nlevel = "debug"\nformat = "json"\n{extra}{dests}'
    )
    return path


class Serve:
    """``hyperct-agent serve`` in a subprocess (optionally inside a network namespace)."""

    def __init__(
        self,
        config: Path,
        netns: NetNS | None = None,
        launcher: Sequence[str] = ("-m", "agent"),
        args: Sequence[str] = (),
        ready: str = "node listening",
    ) -> None:
        # ``launcher``: what runs the CLI (a test module may wrap it, e.g. to slow the model).
        # ``args``: more serve arguments (``--role``); ``ready``: the log event that means started.
        cmd = [sys.executable, *launcher, "serve", *args, "--config", str(config), "--grace", "2"]
        popen: Callable[..., Any] = netns.popen if netns else __import__("subprocess").Popen
        self.proc = popen(cmd, stderr=-1, stdout=-3, text=True, cwd=ROOT)
        self.lines: list[str] = []
        self.port = self._port(ready)
        threading.Thread(target=self._drain, daemon=True).start()

    def _port(self, ready: str) -> int:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("{") and json.loads(line).get("event") == ready:
                return int(json.loads(line).get("port", 0))
        raise AssertionError("serve did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status; a failed exit prints the log's tail (pytest shows it)."""
        self.proc.terminate()
        code = int(self.proc.wait(timeout))
        if code != 0:
            time.sleep(0.2)  # let the drain thread take the last lines
            print(f"serve exited {code}; last lines:\n" + "".join(self.lines[-30:]))
        return code


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    serve: Serve | None = None,
    detail: Any = None,
) -> Any:
    """Poll ``condition``; on timeout fail with ``detail`` (what the condition last saw)
    and the tail of the agent's log, its scheduler's chatter left out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    lines = [line for line in serve.lines if "apscheduler" not in line] if serve else []
    raise AssertionError(f"timed out waiting for {what}: {detail}\n" + "".join(lines[-40:]))
