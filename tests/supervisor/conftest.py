from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .helpers import Launcher


@pytest.fixture
def run_launcher() -> Iterator[Callable[..., Launcher]]:
    """Start launchers; each one and everything it started is killed at the end of the test."""
    started: list[Launcher] = []

    def start(*args: Any, **kwargs: Any) -> Launcher:
        launcher = Launcher(*args, **kwargs)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.close()
