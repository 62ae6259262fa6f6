"""`launch doctor [--json]`: what an operator would check by hand before blaming vLLM.

One line per check: the launcher and Python, the vLLM dialect, CANN (found, version, environment
sourced), NNAL, the NPUs (visible, selected, health, HBM, who holds them), the model directory, the
plan, the cache directory, vLLM's port and the status port. A failing line says what it means and
what to do. Exit 0 when nothing failed, 3 otherwise. Doctor reads and asks; it stops nothing.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from launcher import __version__, cann, devices, host, npu, planner, preflight
from launcher.dialects import Dialect
from launcher.errors import EXIT_ENVIRONMENT, EXIT_OK, LaunchError
from launcher.modelinfo import ModelDirError, read_model
from launcher.plan import Plan
from launcher.settings import LaunchSettings

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, FAIL, skip
    detail: str
    means: str | None = None  # for warn and FAIL: what it means
    fix: str | None = None  # for warn and FAIL: what to do


def _failed(name: str, exc: LaunchError, means: str) -> Check:
    """A LaunchError as a failing line: its message without the fix (that has its own line)."""
    detail = exc.what if exc.key == name else exc.message.split("\n  fix:")[0]
    return Check(name, FAIL, detail, means, exc.fix)


def run(request: planner.Request, environ: Mapping[str, str]) -> list[Check]:
    checks = [Check("launch", OK, f"launch {__version__} on Python {platform.python_version()}")]
    facts = host.gather(environ)
    try:
        resolved: planner.Resolved | None = planner.resolve(request, environ)
    except LaunchError as exc:
        resolved = None
        checks.append(_failed("settings", exc, "the profiles, --set values or LAUNCH_* variables are invalid"))
    settings = resolved.settings if resolved is not None else LaunchSettings()
    dialect = _dialect(resolved, facts, checks)
    ascend = dialect is None or dialect.ascend  # an unknown vLLM on a node: look at the NPUs anyway
    facts = host.with_runtime(facts, settings, ascend=ascend)
    checks += _cann(facts.cann, dialect, ascend)
    selection = _devices(settings, resolved, facts, ascend, checks)
    if ascend:
        checks += _npus(settings, facts, selection)
    checks += _model_and_plan(request, resolved, facts, settings)
    return checks


def _dialect(resolved: planner.Resolved | None, facts: host.HostFacts, checks: list[Check]) -> Dialect | None:
    installed = ", ".join(f"{k} {v}" for k, v in sorted(facts.installed.items())) or "no vLLM distribution"
    if resolved is None:
        return None
    try:
        dialect = planner.target_dialect(resolved, facts)
    except LaunchError as exc:
        checks.append(_failed("dialect", exc, f"the launcher cannot tell how to start vLLM (installed: {installed})"))
        return None
    where = resolved.merged.source_of("dialect")
    chosen = f"from {where}" if where else "detected"
    checks.append(Check("dialect", OK, f"{dialect.name} ({chosen}); installed: {installed}"))
    return dialect


def _cann(env: cann.CannEnv, dialect: Dialect | None, ascend: bool) -> list[Check]:
    out: list[Check] = []
    if not ascend:
        out.append(Check("cann", SKIP, f"{dialect.name if dialect else 'this dialect'} runs without CANN"))
    elif env.toolkit is None:
        out.append(
            Check(
                "cann",
                FAIL,
                f"toolkit not found: looked for {', '.join(env.looked_for)}; ASCEND_TOOLKIT_HOME is unset",
                "vLLM will fail to load CANN (`libhccl.so: cannot open shared object file`)",
                cann.TOOLKIT_FIX,
            )
        )
    else:
        out.append(Check("cann", OK, f"toolkit {env.version or 'of unknown version'} at {env.toolkit}"))
    if env.missing_env_files:
        out.append(
            Check(
                "environment",
                FAIL,
                f"env file {', '.join(env.missing_env_files)} does not exist",
                "check and run refuse to start without it",
                "mount it, or remove it from env_files",
            )
        )
    elif env.error:
        out.append(
            Check(
                "environment",
                FAIL,
                f"sourcing failed: {env.error}",
                "vLLM would start without CANN's variables",
                "run the same `source` in a shell in the container to see why",
            )
        )
    elif env.sourced:
        out.append(
            Check("environment", OK, f"sourced {', '.join(env.sourced)}: {len(env.changes)} variables set or changed")
        )
    elif "toolkit" in env.already:
        out.append(Check("environment", OK, "already set up before the launcher (ASCEND_TOOLKIT_HOME is set)"))
    elif ascend:
        out.append(Check("environment", SKIP, "nothing to source"))
    if ascend and dialect is not None and dialect.name != "ascend-vllm-0.6":
        if env.nnal or "nnal" in env.already:
            out.append(Check("nnal", OK, env.nnal or "already set up (ATB_HOME_PATH is set)"))
        else:
            out.append(
                Check(
                    "nnal",
                    WARN,
                    "NNAL (ATB) not found under /usr/local/Ascend/nnal",
                    "vllm-ascend's ATB operators will be missing",
                    "install CANN's NNAL package in the image, or set cann.nnal_home",
                )
            )
    return out


def _devices(
    settings: LaunchSettings,
    resolved: planner.Resolved | None,
    facts: host.HostFacts,
    ascend: bool,
    checks: list[Check],
) -> devices.Selection | None:
    if not ascend:
        checks.append(Check("devices", SKIP, "no NPUs on this dialect"))
        return None
    source = resolved.merged.source_of("devices") if resolved else None
    try:
        sel = devices.select(settings.devices, source, facts.runtime_environ, facts.npus, facts.npus_source)
    except LaunchError as exc:
        checks.append(_failed("devices", exc, "the launcher cannot tell which NPUs vLLM gets"))
        return None
    if sel.indices is None:
        checks.append(
            Check(
                "devices",
                FAIL,
                "no NPU visible: ASCEND_VISIBLE_DEVICES and ASCEND_RT_VISIBLE_DEVICES unset, no /dev/davinciN",
                "vLLM has no NPU to run on",
                devices.NO_NPU_FIX,
            )
        )
    elif sel.problem:
        checks.append(
            Check(
                "devices",
                FAIL,
                sel.problem,
                "vLLM would be told to use an NPU it cannot see",
                devices.INDEX_FIX,
            )
        )
    else:
        seen = "" if "visible" in sel.source else f"; {sel.visible or 'how many'} visible ({facts.npus_source or '?'})"
        checks.append(Check("devices", OK, f"{devices.RT_VARIABLE}={sel.text}: {sel.source}{seen}"))
    return sel


def _npus(settings: LaunchSettings, facts: host.HostFacts, sel: devices.Selection | None) -> list[Check]:
    environ = facts.runtime_environ
    try:
        snapshot = npu.query(settings.npu, environ)
    except npu.SmiUnavailable as exc:
        return [Check("npu-smi", FAIL, exc.what, exc.means, exc.fix)]
    out = [
        Check(
            "npu-smi",
            OK,
            f"npu-smi {snapshot.smi_version or '?'}, driver {snapshot.driver_version or '?'}: "
            f"{len(snapshot.chips)} chip{'s' if len(snapshot.chips) != 1 else ''}",
        )
    ]
    indices = sel.indices if sel is not None and sel.indices is not None else [c.index for c in snapshot.chips]
    marker = devices.instance_id(*_service(settings))
    for index in indices:
        if index >= len(snapshot.chips):
            out.append(
                Check(
                    f"device {index}",
                    FAIL,
                    f"not listed by npu-smi ({len(snapshot.chips)} chips)",
                    "vLLM would be told to use an NPU it cannot see",
                    devices.INDEX_FIX,
                )
            )
            continue
        out.append(_chip_check(snapshot, snapshot.chips[index], settings, environ, marker))
    return out


def _service(settings: LaunchSettings) -> tuple[str, int]:
    """Model and port as the settings say, for when no plan could be built."""
    port = str(settings.vllm.get("port", ""))
    return settings.model or str(settings.vllm.get("model") or ""), int(port) if port.isdigit() else 8000


def _chip_check(
    snapshot: npu.Snapshot, chip: npu.Chip, settings: LaunchSettings, environ: Mapping[str, str], marker: str
) -> Check:
    name = chip.label
    detail = f"{chip.name} {chip.health}, {chip.usage}"
    problem = npu.health_problem(settings.npu, environ, chip)
    if problem:
        return Check(
            name,
            FAIL,
            f"{chip.name} {problem}, {chip.usage}",
            "the NPU reports a fault; vLLM would fail on it or produce wrong results",
            "use other NPUs (devices), or have the node's NPU checked",
        )
    ours, foreign = npu.classify(snapshot.holders_on([chip]), marker)
    if foreign:
        return Check(
            name,
            FAIL,
            detail + "; held by " + "; ".join(h.describe([chip]).split(": ", 1)[1] for h in foreign),
            "another process holds this NPU's memory; vLLM would run out of memory or fail to start",
            "stop it (from an earlier container: on the node), or choose other NPUs",
        )
    if ours:
        return Check(
            name,
            WARN,
            detail + "; held by this launcher's earlier vLLM: " + ", ".join(f"PID {h.local_pid}" for h in ours),
            "a leftover of an earlier start still holds memory",
            "`launch run` stops it before starting (npu.kill_leftovers)",
        )
    if chip.health == "Warning":
        return Check(name, WARN, detail, "the NPU reports a warning", "`npu-smi info -t health` shows which")
    return Check(name, OK, detail)


def _model_and_plan(
    request: planner.Request, resolved: planner.Resolved | None, facts: host.HostFacts, settings: LaunchSettings
) -> list[Check]:
    out: list[Check] = []
    model = _service(settings)[0]
    plan: Plan | None = None
    if not model:
        out.append(Check("model", SKIP, "no model given (--model or LAUNCH_MODEL)"))
    else:
        out.append(_model_check(model))
    if model and resolved is not None:
        try:
            # The environment checks above already ran: build as `check` would, minus those.
            plan = planner.build(request, replace(facts, cann=cann.CannEnv()), strict=True, resolved=resolved)
        except LaunchError as exc:
            if exc.key not in ("model", "devices"):  # already reported above
                out.append(_failed("plan", exc, "check and run would refuse this configuration"))
        else:
            out.append(Check("plan", OK, f"{', '.join(plan.profiles)} on {plan.dialect}"))
            out += [Check("plan", WARN, w) for w in plan.warnings]  # each warning says what to do
    out.append(_cache_check(settings.cache_dir))
    if plan is not None:
        out.append(_port_check("port", plan.host, plan.port, "vllm.port"))
    else:
        host_name = str(settings.vllm.get("host") or "0.0.0.0")
        out.append(_port_check("port", host_name, _service(settings)[1], "vllm.port"))
    if settings.status_port is None:
        out.append(Check("status port", SKIP, "LAUNCH_STATUS_PORT not set (no /livez, /readyz, /metrics)"))
    else:
        out.append(_port_check("status port", "0.0.0.0", settings.status_port, "status_port"))
    return out


def _model_check(path: str) -> Check:
    try:
        info = read_model(path)
    except ModelDirError as exc:
        return Check(
            "model",
            FAIL,
            f"{path}: {exc.what}",
            "vLLM cannot load the model",
            "mount the model (a Hugging Face directory with config.json and weights) there",
        )
    weights = sorted({p.name for pattern in WEIGHT_PATTERNS for p in Path(path).glob(pattern)})
    limits = ", ".join(f"{k} {v}" for k, v in info.length_limits.items())
    detail = f"{path}: {info.model_type or 'unknown type'}" + (f", {limits}" if limits else "")
    if not weights:
        return Check(
            "model",
            WARN,
            detail + "; no weight files (*.safetensors, *.bin)",
            "vLLM will fail to load weights unless they are elsewhere",
            "copy the checkpoint's weight files into the directory",
        )
    return Check("model", OK, detail + f", {len(weights)} weight file{'s' if len(weights) != 1 else ''}")


def _cache_check(path: str | None) -> Check:
    if not path:
        return Check("cache", SKIP, "no cache directory set (LAUNCH_CACHE_DIR)")
    target = Path(path)
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            return Check(
                "cache",
                FAIL,
                f"{path} is not writable",
                "graph compilation cannot be cached; every start compiles again",
                "mount it writable for the container's user, or set LAUNCH_CACHE_DIR elsewhere",
            )
        from launcher.cache import CacheDir

        entries = CacheDir(target).entries()
        states = {s: sum(1 for e in entries if e.state == s) for s in ("complete", "building", "corrupt", "foreign")}
        free = shutil.disk_usage(target).free // 2**30
        summary = ", ".join(f"{n} {s}" for s, n in states.items() if n) or "empty"
        if states["corrupt"]:
            return Check(
                "cache",
                WARN,
                f"{path}: {summary}, {free} GiB free",
                "some entries have unreadable manifests and will never be used",
                "launch cache prune removes them",
            )
        return Check("cache", OK, f"{path}: {summary}, {free} GiB free")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and os.access(parent, os.W_OK | os.X_OK):
        return Check("cache", OK, f"{path} does not exist yet; it will be created")
    return Check(
        "cache",
        FAIL,
        f"{path} does not exist and cannot be created",
        "graph compilation cannot be cached",
        "mount a writable volume there, or set LAUNCH_CACHE_DIR elsewhere",
    )


def _port_check(name: str, host_name: str, port: int, key: str) -> Check:
    probe = Plan(argv=[], env={}, cwd=None, dialect="", profiles=[], host=host_name, port=port)
    try:
        preflight.port_is_free(probe)
    except LaunchError as exc:
        return Check(
            name,
            FAIL,
            f"{host_name}:{port}: {exc.what}",
            "the server could not listen there",
            exc.fix and exc.fix.replace("vllm.port", key),
        )
    return Check(name, OK, f"{host_name}:{port} is free")


def render_text(checks: list[Check]) -> str:
    failed = sum(c.status == FAIL for c in checks)
    width = max(len(c.name) for c in checks)
    head = f"launch doctor: {failed} of {len(checks)} checks failed" if failed else "launch doctor: all checks passed"
    lines = [head]
    for c in checks:
        lines.append(f"  {c.status:<4}  {c.name:<{width}}  {c.detail}")
        pad = " " * (width + 10)
        if c.means and c.status in (FAIL, WARN):
            lines.append(f"{pad}means: {c.means}")
        if c.fix and c.status in (FAIL, WARN):
            lines.append(f"{pad}fix: {c.fix}")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    failed = sum(c.status == FAIL for c in checks)
    report: dict[str, Any] = {
        "ok": failed == 0,
        "failed": failed,
        "checks": [{k: v for k, v in asdict(c).items() if v is not None} for c in checks],
    }
    return json.dumps(report, indent=2, ensure_ascii=False)


def main(request: planner.Request, environ: Mapping[str, str], *, as_json: bool) -> int:
    checks = run(request, environ)
    print(render_json(checks) if as_json else render_text(checks))
    return EXIT_OK if all(c.status != FAIL for c in checks) else EXIT_ENVIRONMENT
