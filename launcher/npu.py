"""npu-smi and the device preflight.

`npu-smi info` is parsed by its headers, never by fixed positions: layouts differ by chip and driver
(two chips per NPU with a `Phy-ID` or `Device` column, no HBM column on inference cards, a "Process id
in container" column on newer drivers). `preflight` runs before each start of vLLM: the selected NPUs
are healthy and no other process holds their memory; leftovers of this launcher's own earlier vLLM are
stopped and waited for. `after_stop` checks, after vLLM stopped, that our processes let go of the NPUs.

Acting part: runs npu-smi and signals processes; which devices are used is decided by the plan.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from launcher import command
from launcher.devices import INDEX_FIX, INSTANCE_VARIABLE
from launcher.dialects import DIALECTS
from launcher.errors import PreflightError
from launcher.host import HostFacts
from launcher.plan import Plan
from launcher.settings import NpuSettings

POLL_INTERVAL = 0.5  # seconds between npu-smi queries while waiting for memory to be released
KILL_GRACE_MAX = 10.0  # SIGTERM to SIGKILL for leftovers (at most; supervisor.stop_timeout if shorter)

# Header words of `npu-smi info` and the fields they fill. Unknown headers are kept under their name.
_FIELDS = {
    "NPU": "npu",
    "Name": "name",
    "Health": "health",
    "Power(W)": "power",
    "Temp(C)": "temp",
    "Hugepages-Usage(page)": "hugepages",
    "Chip": "chip",
    "Phy-ID": "device",
    "Device": "device",
    "Bus-Id": "bus_id",
    "AICore(%)": "aicore",
    "Memory-Usage(MB)": "memory",
    "HBM-Usage(MB)": "hbm",
    "Process id": "pid",
    "Process name": "process",
    "Process memory(MB)": "process_memory",
    "Process id in container": "container_pid",
}
_PAIR = re.compile(r"(\S+)\s*/\s*(\S+)")  # "4565 / 15137", "30710/ 32768": one value
_VERSION = re.compile(r"npu-smi\s+(\S+)\s+Version:\s*(\S+)")


# --- what npu-smi shows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Chip:
    """One NPU chip: what the runtime calls a device. `index` is its logical index: its place in
    `npu-smi info`, which is what ASCEND_RT_VISIBLE_DEVICES counts inside the container."""

    index: int
    npu: int
    chip: int
    name: str = ""
    health: str = ""
    bus_id: str = ""
    memory: tuple[int, int] | None = None  # Memory-Usage(MB): used, total (DDR; all a 310P has)
    hbm: tuple[int, int] | None = None  # HBM-Usage(MB): used, total; None where the layout has none
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"device {self.index} (NPU {self.npu} chip {self.chip})"

    @property
    def usage(self) -> str:
        if self.hbm is not None:
            return f"HBM {self.hbm[0]}/{self.hbm[1]} MB"
        if self.memory is not None:
            return f"memory {self.memory[0]}/{self.memory[1]} MB"
        return "memory unknown"


@dataclass(frozen=True)
class Holder:
    """A process npu-smi lists on a chip."""

    npu: int
    chip: int
    pid: int  # as npu-smi shows it: the host's PID when it runs outside the container
    name: str
    memory_mb: int | None
    container_pid: int | None = None  # the newer drivers' "Process id in container" (None: NA or absent)

    @property
    def local_pid(self) -> int:
        """The PID in our namespace, where the driver says it (older drivers don't)."""
        return self.container_pid if self.container_pid is not None else self.pid

    def describe(self, chips: Sequence[Chip]) -> str:
        where = next((c.label for c in chips if (c.npu, c.chip) == (self.npu, self.chip)), f"NPU {self.npu}")
        size = f"{self.memory_mb} MB" if self.memory_mb is not None else "memory unknown"
        pid = f"PID {self.pid}" + (f" (PID {self.container_pid} here)" if self.container_pid is not None else "")
        return f"{where}: {pid} {self.name} {size}"


@dataclass(frozen=True)
class Snapshot:
    smi_version: str | None
    driver_version: str | None
    chips: list[Chip]
    holders: list[Holder]

    def holders_on(self, chips: Sequence[Chip]) -> list[Holder]:
        keys = {(c.npu, c.chip) for c in chips}
        return [h for h in self.holders if (h.npu, h.chip) in keys]


class SmiUnavailable(Exception):
    """npu-smi could not answer: absent, hung or failed. `means` and `fix` are for the user."""

    def __init__(self, kind: str, what: str, means: str, fix: str) -> None:
        self.kind, self.what, self.means, self.fix = kind, what, means, fix
        super().__init__(what)


# --- parsing ---------------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    text = line.strip()
    text = text[1:] if text.startswith("|") else text
    text = text[:-1] if text.endswith("|") else text
    return [c.strip() for c in text.split("|")]


def _tokens(cell: str) -> list[str]:
    return _PAIR.sub(r"\1/\2", cell).split()


def _fields(header: list[str], row: list[str], *, whole_cells_after_first: bool = False) -> dict[str, str]:
    """Pair a row's values with its header's names, cell by cell. Inside a cell, values are matched
    to header words in order (the last name takes what is left over)."""
    out: dict[str, str] = {}
    for i, (head, cell) in enumerate(zip(header, row, strict=False)):
        if whole_cells_after_first and i > 0:
            out[_FIELDS.get(" ".join(head.split()), " ".join(head.split()))] = cell
            continue
        names, values = head.split(), _tokens(cell)
        if len(values) > len(names) and names:
            values = [*values[: len(names) - 1], " ".join(values[len(names) - 1 :])]
        for name, value in zip(names, values, strict=False):
            out[_FIELDS.get(name, name)] = value
    return out


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _used_total(text: str | None) -> tuple[int, int] | None:
    if not text or "/" not in text:
        return None
    used, _, total = text.partition("/")
    a, b = _int(used.strip()), _int(total.strip())
    return (a, b) if a is not None and b is not None else None


def parse_info(text: str) -> Snapshot:
    """`npu-smi info`: the version line, the device table (two rows per chip) and the process table."""
    smi_version = driver_version = None
    rows: list[list[str]] = []
    for line in text.splitlines():
        match = _VERSION.search(line)
        if match:
            smi_version, driver_version = match.group(1), match.group(2)
        elif line.strip().startswith("|"):
            rows.append(_cells(line))
    chips: list[Chip] = []
    holders: list[Holder] = []
    i = 0
    while i < len(rows):
        row = rows[i]
        first = row[0].split()
        if first[:1] == ["NPU"] and any(c.split()[:1] == ["Health"] for c in row) and i + 1 < len(rows):
            top, bottom = row, rows[i + 1]
            i += 2
            while _is_chip_row(rows, i, top):
                chips.append(_chip(len(chips), _fields(top, rows[i]) | _fields(bottom, rows[i + 1])))
                i += 2
            continue
        if first[:2] == ["NPU", "Chip"] and any("Process" in c for c in row):
            header = row
            i += 1
            while i < len(rows) and rows[i][0].split()[:2] != ["NPU", "Chip"]:
                holder = _holder(_fields(header, rows[i], whole_cells_after_first=True))
                if holder is not None:
                    holders.append(holder)
                i += 1
            continue
        i += 1
    return Snapshot(smi_version, driver_version, chips, holders)


def _is_chip_row(rows: list[list[str]], i: int, header: list[str]) -> bool:
    """Two rows of as many cells as the header, the first starting with an NPU number."""
    if i + 1 >= len(rows):
        return False
    first = rows[i][0].split()
    return len(rows[i]) == len(header) and len(rows[i + 1]) == len(header) and bool(first) and first[0].isdigit()


def _chip(index: int, values: dict[str, str]) -> Chip:
    known = {"npu", "chip", "name", "health", "bus_id", "memory", "hbm"}
    return Chip(
        index=index,
        npu=_int(values.get("npu")) or 0,
        chip=_int(values.get("chip")) or 0,
        name=values.get("name", ""),
        health=values.get("health", ""),
        bus_id=values.get("bus_id", ""),
        memory=_used_total(values.get("memory")),
        hbm=_used_total(values.get("hbm")),
        extra={k: v for k, v in values.items() if k not in known},
    )


def _holder(values: dict[str, str]) -> Holder | None:
    npu, chip, pid = _int(values.get("npu")), _int(values.get("chip")), _int(values.get("pid"))
    if npu is None or chip is None or pid is None:
        return None  # "No running processes found in NPU 0"
    return Holder(
        npu=npu,
        chip=chip,
        pid=pid,
        name=values.get("process", ""),
        memory_mb=_int(values.get("process_memory")),
        container_pid=_int(values.get("container_pid")),
    )


def parse_view(text: str) -> dict[str, str]:
    """The `key : value` views: `npu-smi info -t usages -i N`, `-t health`, `-t common`."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def explain_failure(text: str, returncode: int) -> tuple[str, str, str]:
    """What npu-smi's failure output says: (what, what it means, what to do)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("DrvMngGetConsoleLogLevel")]
    said = " / ".join(lines[-2:]) or f"exit status {returncode} and no output"
    if "-8005" in text:
        return (
            f"npu-smi failed: {said}",
            "the driver's management interface (DCMI) could not start: usually another container holds "
            "the NPU, or this container lacks /dev/davinci_manager, /dev/devmm_svm and /dev/hisi_hdc",
            "see what uses the NPU on the node (`npu-smi info` there); give the pod its NPUs through the "
            "device plugin, or mount those device files",
        )
    if "-8020" in text or "device is used" in text:
        return (
            f"npu-smi failed: {said}",
            "DCMI could not start (ret -8020): the driver's libraries or device files are missing in the "
            "container, or another container holds the NPU",
            "mount /usr/local/Ascend/driver and the NPU device files as the device plugin does, and make "
            "sure LD_LIBRARY_PATH has the driver's lib64 (CANN's set_env.sh adds it)",
        )
    return (
        f"npu-smi failed with exit status {returncode}: {said}",
        "the NPU driver did not answer as expected",
        "run `npu-smi info` in the container to see the whole message; check the driver on the node",
    )


# --- running npu-smi -------------------------------------------------------------------------------


def _run(settings: NpuSettings, environ: Mapping[str, str], args: Sequence[str]) -> str:
    program = shutil.which(settings.smi, path=environ.get("PATH") or os.defpath)
    if program is None:
        raise SmiUnavailable(
            "absent",
            f"{settings.smi} is not on PATH",
            "device health and memory cannot be checked; vLLM may still start",
            "mount npu-smi from the node (hostPath /usr/local/sbin/npu-smi, as the guide's pod does), "
            "or set npu.smi to its path",
        )
    try:
        done = command.run([program, *args], env=environ, timeout=settings.smi_timeout)
    except command.TimedOut:
        raise SmiUnavailable(
            "timeout",
            f"`{settings.smi} {' '.join(args)}` did not answer within {settings.smi_timeout:g}s",
            "the NPU driver is busy or stuck; device health and memory cannot be checked",
            "check the driver on the node (`npu-smi info` there, dmesg); raise npu.smi_timeout if it is merely slow",
        ) from None
    except OSError as exc:
        raise SmiUnavailable(
            "failed",
            f"cannot run {program}: {exc.strerror}",
            "device health and memory cannot be checked",
            "make npu-smi executable, or set npu.smi to a working one",
        ) from None
    return done.stdout + ("\n" + done.stderr if done.returncode else "")


def query(settings: NpuSettings, environ: Mapping[str, str]) -> Snapshot:
    """`npu-smi info`, parsed; SmiUnavailable when absent, hung, failed, or without a device table."""
    text = _run(settings, environ, ["info"])
    snapshot = parse_info(text)
    if not snapshot.chips:
        what, means, fix = explain_failure(text, 0 if text.strip() else 1)
        raise SmiUnavailable("failed", what, means, fix)
    return snapshot


def view(settings: NpuSettings, environ: Mapping[str, str], kind: str, chip: Chip) -> dict[str, str]:
    """`npu-smi info -t KIND -i NPU [-c CHIP]` (usages, health, common); {} when it cannot answer."""
    args = ["info", "-t", kind, "-i", str(chip.npu)]
    if kind == "health":
        args += ["-c", str(chip.chip)]
    try:
        return parse_view(_run(settings, environ, args))
    except SmiUnavailable:
        return {}


# --- which processes are ours ----------------------------------------------------------------------


def is_ours(pid: int, marker: str) -> bool:
    """Whether a process holding an NPU is a leftover of this launcher's own earlier vLLM.

    The rule, conservative on purpose (a foreign process is never stopped):
    1. the PID exists in our PID namespace and its environment can be read (same user, or root);
    2. its environment carries `LAUNCHER_INSTANCE` with this plan's value (the launcher sets it on
       vLLM, so every engine and worker process inherits it; the value names model and port, so a
       second launcher serving something else in the same container does not match);
    3. it is orphaned: its parent is PID 1 (or 0, outside the namespace), this launcher itself (PID 1
       or a subreaper adopts orphans), or another process that passes this same test. A process whose
       living parent is anything else (a shell running a rendered script) belongs to that parent.
    It is never this launcher itself. npu-smi's PIDs from outside the container (older drivers print
    the host's PID) either do not exist here or fail rule 2.
    """
    me = os.getpid()
    seen: set[int] = set()
    current = pid
    while current not in seen:
        seen.add(current)
        if current == me:
            return False
        try:
            proc = psutil.Process(current)
            if proc.environ().get(INSTANCE_VARIABLE) != marker:
                return False
            parent = proc.ppid()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            return False
        if parent in (0, 1, me):
            return True
        current = parent
    return False


def _marker(plan: Plan, environ: Mapping[str, str]) -> str | None:
    return plan.child_environ(environ).get(INSTANCE_VARIABLE)


def classify(holders: Sequence[Holder], marker: str | None) -> tuple[list[Holder], list[Holder]]:
    """(ours, foreign) by `is_ours`."""
    ours = [h for h in holders if marker and is_ours(h.local_pid, marker)]
    return ours, [h for h in holders if h not in ours]


# --- preflight and after stop ----------------------------------------------------------------------

_said: set[str] = set()


def _once(log: Any, level: str, event: str, **fields: Any) -> None:
    """Say something only the first time (preflight runs before every restart)."""
    if event in _said:
        return
    _said.add(event)
    getattr(log, level)(event, **fields)


def _environ(plan: Plan, facts: HostFacts | None) -> dict[str, str]:
    return plan.child_environ(facts.environ if facts is not None else os.environ)


def selected_chips(plan: Plan, snapshot: Snapshot) -> list[Chip]:
    """The chips the plan's logical device indices point at (all of them when the plan does not say)."""
    if plan.devices is None:
        return list(snapshot.chips)
    beyond = [i for i in plan.devices if i >= len(snapshot.chips)]
    if beyond:
        listed = ", ".join(c.label for c in snapshot.chips)
        raise PreflightError(
            f"device {', '.join(map(str, beyond))} is not listed by npu-smi, which shows "
            f"{len(snapshot.chips)}: {listed}",
            key="devices",
            value=",".join(map(str, plan.devices)),
            source=plan.sources.get("devices") or "ASCEND_RT_VISIBLE_DEVICES",
            fix=INDEX_FIX,
        )
    return [snapshot.chips[i] for i in plan.devices]


def preflight(plan: Plan, facts: HostFacts | None, log: Any) -> None:
    """Before each start of vLLM: every selected NPU is healthy and holds no other process's memory.

    Leftovers of this launcher's earlier vLLM (see `is_ours`) are stopped (SIGTERM, then SIGKILL) and
    waited for until npu-smi no longer lists them (`npu.free_timeout`). Any other holder ends it with
    PreflightError (exit 3) listing device, PID and MB; nothing is stopped then. Without npu-smi (absent,
    hung, failing) the checks are skipped with a warning, said once; off Ascend they are skipped, said
    once. Call it only while no vLLM of this launcher is meant to be running.
    """
    if not DIALECTS[plan.dialect].ascend:
        _once(log, "info", "npu_checks_skipped", message=f"{plan.dialect} uses no NPU: npu-smi checks skipped")
        return
    environ = _environ(plan, facts)
    try:
        snapshot = query(plan.npu, environ)
    except SmiUnavailable as exc:
        _once(log, "warning", f"npu_smi_{exc.kind}", message=exc.what, means=exc.means, fix=exc.fix)
        return
    chips = selected_chips(plan, snapshot)
    _check_health(plan, chips, environ, log)
    holders = snapshot.holders_on(chips)
    if holders:
        ours, foreign = classify(holders, _marker(plan, environ))
        if foreign:
            raise PreflightError(
                f"{len(foreign)} process{'es' if len(foreign) != 1 else ''} not started by this launcher "
                f"hold{'s' if len(foreign) == 1 else ''} memory on the selected NPUs: "
                + "; ".join(h.describe(chips) for h in foreign),
                key="devices",
                value=",".join(str(c.index) for c in chips),
                source=plan.sources.get("devices"),
                fix="stop them (a process from an earlier container shows the node's PID: stop it there), "
                "or choose other NPUs with devices / ASCEND_RT_VISIBLE_DEVICES",
            )
        if not plan.npu.kill_leftovers:
            raise PreflightError(
                "leftovers of this launcher's earlier vLLM hold memory on the selected NPUs: "
                + "; ".join(h.describe(chips) for h in ours),
                key="npu.kill_leftovers",
                value=False,
                source=plan.sources.get("npu.kill_leftovers"),
                fix=f"stop them (kill {' '.join(str(h.local_pid) for h in ours)}) or set npu.kill_leftovers: true",
            )
        _stop(ours, chips, plan, log)
        _wait_released(plan, chips, {h.local_pid for h in ours}, environ, log)
    log.info("npu_ready", devices=[f"{c.label}: {c.health}, {c.usage}" for c in chips])


def health_problem(settings: NpuSettings, environ: Mapping[str, str], chip: Chip) -> str | None:
    """None for a usable chip (OK or Warning); else its health, with the health view's error code."""
    if chip.health in ("OK", "Warning"):
        return None
    detail = view(settings, environ, "health", chip)
    code, info = detail.get("Error Code"), detail.get("Error Information")
    said = f": {info}" if info and info != "NA" else ""
    return (chip.health or "of unknown health") + (f" (error code {code}{said})" if code and code != "NA" else "")


def _check_health(plan: Plan, chips: Sequence[Chip], environ: Mapping[str, str], log: Any) -> None:
    """OK passes; Warning is logged; anything else (Alarm, Critical, ...) is exit 3 with the health view."""
    for chip in chips:
        if chip.health == "Warning":
            log.warning("npu_health_warning", device=chip.label, health=chip.health)
    bad = [f"{c.label} is {p}" for c in chips if (p := health_problem(plan.npu, environ, c))]
    if bad:
        raise PreflightError(
            "; ".join(bad),
            key="devices",
            value=",".join(str(c.index) for c in chips),
            source=plan.sources.get("devices"),
            fix="use healthy NPUs (devices / ASCEND_RT_VISIBLE_DEVICES), or have the node's NPU checked "
            "(`npu-smi info -t health -i N -c C` on the node)",
        )


def _stop(ours: Sequence[Holder], chips: Sequence[Chip], plan: Plan, log: Any) -> None:
    procs: dict[int, psutil.Process] = {}
    for holder in ours:
        try:
            proc = psutil.Process(holder.local_pid)
            procs[proc.pid] = proc
            for child in proc.children(recursive=True):
                procs.setdefault(child.pid, child)
        except psutil.Error:
            continue
    log.warning(
        "npu_leftovers_stopping",
        message="stopping processes of this launcher's earlier vLLM that still hold NPU memory",
        processes=[h.describe(chips) for h in ours],
        pids=sorted(procs),
    )
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.Error:
            continue
    grace = min(plan.supervisor.stop_timeout, KILL_GRACE_MAX)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=grace)


def _held_until(
    plan: Plan, environ: Mapping[str, str], held: Callable[[Holder], bool], wait: float
) -> tuple[list[Holder], Snapshot]:
    """Ask npu-smi until no holder matches `held` or `wait` seconds passed: (what is still held, the
    last answer). Memory is released a moment after a process exits. SmiUnavailable propagates."""
    deadline = time.monotonic() + wait
    while True:
        snapshot = query(plan.npu, environ)
        still = [h for h in snapshot.holders if held(h)]
        if not still or time.monotonic() >= deadline:
            return still, snapshot
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def _wait_released(
    plan: Plan, chips: Sequence[Chip], pids: Collection[int], environ: Mapping[str, str], log: Any
) -> None:
    keys = {(c.npu, c.chip) for c in chips}
    try:
        held, _ = _held_until(
            plan, environ, lambda h: (h.npu, h.chip) in keys and h.local_pid in pids, plan.npu.free_timeout
        )
    except SmiUnavailable as exc:
        log.warning("npu_release_unknown", message=exc.what, fix=exc.fix)
        return
    if held:
        raise PreflightError(
            f"stopped the leftovers, but after {plan.npu.free_timeout:g}s npu-smi still lists them: "
            + "; ".join(h.describe(chips) for h in held),
            key="npu.free_timeout",
            value=plan.npu.free_timeout,
            source=plan.sources.get("npu.free_timeout"),
            fix="the driver may take longer to release memory: raise npu.free_timeout, or restart the pod",
        )
    log.info("npu_leftovers_released", devices=[c.label for c in chips])


def after_stop(
    plan: Plan, our_pids: Collection[int], log: Any, *, facts: HostFacts | None = None, wait: float = 5.0
) -> list[Holder]:
    """After vLLM stopped: do any of our processes (`our_pids`, or any that `is_ours`) still hold an
    NPU? Polls npu-smi for up to `wait` seconds (memory is released a moment after exit), then logs
    `npu_released` or `npu_still_held` (device, PID, MB) and returns what is still held. Stops nothing.
    """
    if not DIALECTS[plan.dialect].ascend:
        return []
    environ = _environ(plan, facts)
    marker = _marker(plan, environ)

    def ours(h: Holder) -> bool:
        return h.local_pid in our_pids or h.pid in our_pids or (marker is not None and is_ours(h.local_pid, marker))

    try:
        held, snapshot = _held_until(plan, environ, ours, wait)
    except SmiUnavailable as exc:
        log.debug("npu_release_unknown", message=exc.what)
        return []
    if held:
        log.warning(
            "npu_still_held",
            message="vLLM stopped, but its processes still hold NPU memory",
            processes=[h.describe(snapshot.chips) for h in held],
            fix="the next start stops them (npu.kill_leftovers); or kill them by PID",
        )
    else:
        log.info("npu_released", devices=[c.label for c in snapshot.chips])
    return held
