"""Facts about this machine that the plan depends on, gathered once and passed in as data.

Reading package metadata and the environment is all that happens here; the planner stays pure and
tests hand it made-up facts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from launcher.dialects import DISTRIBUTIONS


@dataclass(frozen=True)
class HostFacts:
    environ: Mapping[str, str] = field(default_factory=dict)
    python: str = "python"
    installed: Mapping[str, str] = field(default_factory=dict)  # distribution -> version
    mindspeed: bool = False  # MindSpeed importable (MoE models on the 0.6 dialect need it)
    cann_version: str | None = None  # part of the graph-cache fingerprint


def installed_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in DISTRIBUTIONS:
        for spelling in (name, name.replace("-", "_")):
            try:
                found[name] = importlib.metadata.version(spelling)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def gather(environ: Mapping[str, str] | None = None) -> HostFacts:
    return HostFacts(
        environ=dict(os.environ if environ is None else environ),
        python=sys.executable or "python",
        installed=installed_versions(),
        # find_spec locates the package without importing it (MindSpeed pulls in torch).
        mindspeed=importlib.util.find_spec("mindspeed") is not None,
    )
