"""The agent's CLI with a slow model: ``python -m tests.agent.slow_serve SECONDS serve ...``.

Every inference first computes in pure Python for SECONDS (holding the GIL
the way CPU-bound Python code does, released only at the interpreter's
switch interval), then runs the real model. Used to show that a slow but
alive worker keeps its jobs.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from agent.cli import main
from agent.pipeline import model


class SlowPredictor:
    def __init__(self, predictor: Any, seconds: float) -> None:
        self._predictor = predictor
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict(self, images: Any) -> Any:
        end = time.monotonic() + self._seconds
        count = 0
        while time.monotonic() < end:
            count += 1
        return self._predictor.predict(images)


def slow_model(seconds: float) -> None:
    real_get = model.ModelHolder.get

    def get(self: model.ModelHolder, timeout: float | None = None) -> Any:
        predictor = real_get(self, timeout)
        return None if predictor is None else SlowPredictor(predictor, seconds)

    model.ModelHolder.get = get  # type: ignore[method-assign]


if __name__ == "__main__":
    slow_model(float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
