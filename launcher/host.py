"""Facts about this machine that the plan depends on, gathered once and passed in as data.

`gather` is cheap (environment, package metadata, /dev listing) and is all that `render` uses.
`with_runtime` adds what costs a subprocess: CANN's environment sourced through bash. The planner
stays pure and tests hand it made-up facts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from launcher import cann, devices
from launcher.dialects import DISTRIBUTIONS
from launcher.settings import LaunchSettings

DEV_DIR = Path("/dev")  # where the Ascend docker runtime mounts /dev/davinciN (tests point it elsewhere)
_DAVINCI = re.compile(r"^davinci(\d+)$")


@dataclass(frozen=True)
class HostFacts:
    environ: Mapping[str, str] = field(default_factory=dict)
    python: str = "python"
    installed: Mapping[str, str] = field(default_factory=dict)  # distribution -> version
    mindspeed: bool = False  # MindSpeed importable (MoE models on the 0.6 dialect need it)
    npus: tuple[str, ...] = ()  # NPUs this container sees, as the host names them
    npus_source: str = ""  # where that list came from
    cann: cann.CannEnv = field(default_factory=cann.CannEnv)  # checked only by check, run, doctor

    @property
    def runtime_environ(self) -> dict[str, str]:
        """The environment once CANN's scripts have run: what vLLM starts from."""
        return {**self.environ, **self.cann.changes}


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


def visible_npus(environ: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
    """The device plugin's ASCEND_VISIBLE_DEVICES, else the /dev/davinciN files, with which it was."""
    plugin = environ.get(devices.PLUGIN_VARIABLE, "").strip()
    if plugin:
        return tuple(devices.parse_visible(plugin)), f"{devices.PLUGIN_VARIABLE}={plugin} from the device plugin"
    try:
        numbers = sorted(int(m.group(1)) for p in DEV_DIR.iterdir() if (m := _DAVINCI.match(p.name)))
    except OSError:
        numbers = []
    if numbers:
        return tuple(str(n) for n in numbers), f"/dev/davinci{','.join(map(str, numbers))}"
    return (), ""


def gather(environ: Mapping[str, str] | None = None) -> HostFacts:
    env = dict(os.environ if environ is None else environ)
    npus, npus_source = visible_npus(env)
    return HostFacts(
        environ=env,
        python=sys.executable or "python",
        installed=installed_versions(),
        # find_spec locates the package without importing it (MindSpeed pulls in torch).
        mindspeed=importlib.util.find_spec("mindspeed") is not None,
        npus=npus,
        npus_source=npus_source,
    )


def with_runtime(facts: HostFacts, settings: LaunchSettings, *, ascend: bool) -> HostFacts:
    """Add CANN's environment (Ascend dialects; elsewhere only a profile's env_files are sourced)."""
    if not ascend and not settings.env_files:
        return facts
    return replace(facts, cann=cann.capture(settings, facts.environ, ascend=ascend))
