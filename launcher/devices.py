"""Which NPUs vLLM gets. Pure: works on the settings and host facts it is handed.

Inside a container the CANN runtime numbers the NPUs it can see 0..n-1 (logical indices), whatever
their numbers on the host, and `ASCEND_RT_VISIBLE_DEVICES` filters by those logical indices. The
Ascend device plugin names the host's devices in `ASCEND_VISIBLE_DEVICES` (the Ascend docker runtime
then mounts them as /dev/davinciN), so what is visible is that list, or the /dev/davinciN files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from launcher.errors import ConfigError

RT_VARIABLE = "ASCEND_RT_VISIBLE_DEVICES"
PLUGIN_VARIABLE = "ASCEND_VISIBLE_DEVICES"
# Set on vLLM's environment so that a later start can tell this launcher's leftover processes from
# anybody else's (see `npu.is_ours`). Not under LAUNCH_: those are the launcher's own settings.
INSTANCE_VARIABLE = "LAUNCHER_INSTANCE"

# What to do when no NPU is visible, or an index is beyond what is (said by check, run and doctor).
NO_NPU_FIX = "request NPUs for the pod (resources: huawei.com/ascend-1980: N) or mount /dev/davinciN"
INDEX_FIX = "use logical indices 0..n-1 of the NPUs this container sees (`launch doctor` lists them)"

_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def instance_id(model: str, port: int) -> str:
    """The same service (model and port) in the same container always gets the same marker."""
    return f"{model}@{port}"


def parse_visible(text: str) -> list[str]:
    """`ASCEND_VISIBLE_DEVICES`: "0,1", ranges "0-3", or names "Ascend910-0" (kept as they are)."""
    found: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        match = _RANGE.match(part)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            found += [str(n) for n in range(low, high + 1)]
        elif part:
            found.append(part)
    return found


def parse_indices(text: str, *, key: str, source: str | None) -> list[int]:
    """Logical device indices: "0,1,2,3" or "0-3"; exit 2 on anything else or on repeats."""
    indices: list[int] = []
    for part in parse_visible(text):
        if not part.isdigit():
            raise ConfigError(
                f"{part!r} is not a device index",
                key=key,
                value=text,
                source=source,
                fix="list logical NPU indices, e.g. 0,1,2,3 (or 0-3), or use auto for every visible NPU",
            )
        indices.append(int(part))
    if not indices:
        raise ConfigError(
            "no devices listed", key=key, value=text, source=source, fix="use auto, or list indices such as 0,1"
        )
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise ConfigError(
            f"device {', '.join(map(str, repeated))} is listed twice",
            key=key,
            value=text,
            source=source,
            fix="list each NPU once",
        )
    return indices


@dataclass(frozen=True)
class Selection:
    """The NPUs vLLM will use (logical indices), and what the plan sets to get them."""

    indices: list[int] | None  # None: nothing visible here and nothing asked for (rendering off the node)
    source: str  # where the choice came from, for messages
    visible: int | None  # how many NPUs the container sees; None when unknown
    env: str | None = None  # ASCEND_RT_VISIBLE_DEVICES to set; None leaves the environment's
    notes: list[str] = field(default_factory=list)  # info lines
    warnings: list[str] = field(default_factory=list)
    problem: str | None = None  # an index beyond what is visible

    @property
    def text(self) -> str:
        return ",".join(map(str, self.indices or []))


def select(
    devices: str,
    source: str | None,
    environ: Mapping[str, str],
    visible: Sequence[str],
    visible_source: str,
) -> Selection:
    """`devices: auto` takes the environment's ASCEND_RT_VISIBLE_DEVICES if set, else every visible NPU;
    a list such as "0,1" is set as ASCEND_RT_VISIBLE_DEVICES (the container's value still wins unless
    given with --set, as for any variable)."""
    count = len(visible) or None
    seen = f"{count} NPU{'s' if count != 1 else ''} visible ({visible_source})" if count else "no NPU visible"
    existing = environ.get(RT_VARIABLE)
    explicit = devices.strip().lower() != "auto"
    from_cli = (source or "").startswith("--set")
    asked = parse_indices(devices, key="devices", source=source) if explicit else None
    if asked is not None and not (existing and not from_cli):
        chosen = Selection(asked, f"devices (from {source})", count, env=",".join(map(str, asked)))
    elif existing:
        where = f"{RT_VARIABLE}={existing} in the environment"
        indices = parse_indices(existing, key=f"env.{RT_VARIABLE}", source="the environment")
        overridden = [f"{where} wins over devices={devices} (from {source})"] if explicit else []
        chosen = Selection(indices, where, count, warnings=overridden)
    elif count:
        indices = list(range(count))
        text = ",".join(map(str, indices))
        chosen = Selection(indices, seen, count, env=text, notes=[f"set {RT_VARIABLE}={text}: devices auto, {seen}"])
    else:
        return Selection(None, "devices auto", None)
    beyond = [i for i in chosen.indices or [] if count is not None and i >= count]
    if beyond:
        problem = (
            f"NPU {', '.join(map(str, beyond))} is not visible ({seen}: logical indices 0..{(count or 1) - 1}), "
            f"but {chosen.source} asks for it"
        )
        return replace(chosen, problem=problem)
    return chosen
