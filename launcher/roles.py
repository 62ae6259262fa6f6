"""Multi-node serving on Ray: which part of a group this container plays, and what that changes in the
plan. Pure: it reads the settings and the environment mapping it is handed, nothing else.

A LeaderWorkerSet group is one leader pod and `LWS_GROUP_SIZE - 1` worker pods; LWS tells each pod its
index (`LWS_WORKER_INDEX`, 0 for the leader) and the leader's address (`LWS_LEADER_ADDRESS`). The
leader starts Ray's head, waits until every node and NPU has joined and then runs vLLM with
`--distributed-executor-backend ray`, tensor parallel = NPUs per node and pipeline parallel = nodes
(vllm-ascend's recommended layout) unless those are set. A worker runs `ray start --address=... --block`
with the same environment vLLM would get, since Ray starts vLLM's workers on that node with it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from launcher import profiles
from launcher.errors import ConfigError
from launcher.plan import RayPlan
from launcher.settings import LaunchSettings

LWS_INDEX = "LWS_WORKER_INDEX"
LWS_SIZE = "LWS_GROUP_SIZE"
LWS_LEADER = "LWS_LEADER_ADDRESS"
RAY_MODULE = "ray.scripts.scripts"  # what the `ray` console script runs
# `ray start --block` drains its node on SIGTERM, stops its processes and exits 1 (Ray's node.py).
WORKER_CLEAN_STOP = frozenset({1})
SourceOf = Callable[[str], str | None]


@dataclass(frozen=True)
class Role:
    name: str  # single | leader | worker
    source: str  # why: "--role", "LWS_WORKER_INDEX=0", ...
    group_size: int | None = None
    leader_address: str | None = None
    npus_per_node: int | None = None
    npus_source: str = ""

    @property
    def multi_node(self) -> bool:
        return self.name in ("leader", "worker")


def _int_variable(environ: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    text = environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(
            f"expected a whole number of at least {minimum}",
            key=name,
            value=text,
            source="the environment",
            fix=f"{name} is set by LeaderWorkerSet; remove it if this pod is not part of a group",
        )
    return value


def _count(devices: str | None) -> int | None:
    if devices is None or not devices.strip():
        return None
    return len([d for d in devices.split(",") if d.strip()])


def decide(settings: LaunchSettings, environ: Mapping[str, str], source_of: SourceOf) -> Role:
    """The role, and the facts of the group it needs; exit 2 when something it needs is missing."""
    name, source = settings.role, source_of("role") or "default"
    index = _int_variable(environ, LWS_INDEX, minimum=0)
    env_size = _int_variable(environ, LWS_SIZE, minimum=1)
    group_size = settings.ray.group_size if settings.ray.group_size is not None else env_size
    if name == "auto":
        if index is None:
            name, source = "single", f"no {LWS_INDEX} in the environment"
        elif group_size == 1:
            name, source = "single", f"{LWS_SIZE}=1: a group of one node"
        else:
            name, source = ("leader" if index == 0 else "worker"), f"{LWS_INDEX}={index}"
    if name == "single":
        return Role("single", source)

    if name == "leader" and group_size is None:
        raise ConfigError(
            "the leader must know how many nodes form the group",
            key="ray.group_size",
            source=source,
            fix=f"set LAUNCH_RAY__GROUP_SIZE (or --set ray.group_size=2), or run under a LeaderWorkerSet ({LWS_SIZE})",
        )
    leader = settings.ray.leader_address or environ.get(LWS_LEADER) or None
    if name == "worker" and not leader:
        raise ConfigError(
            "a worker must know the leader's address",
            key="ray.leader_address",
            source=source,
            fix=f"set LAUNCH_RAY__LEADER_ADDRESS to the leader's host, or run under a LeaderWorkerSet ({LWS_LEADER})",
        )
    npus, npus_source = settings.ray.npus_per_node, source_of("ray.npus_per_node") or ""
    if npus is None and settings.devices.strip().lower() != "auto":
        npus, npus_source = _count(settings.devices), source_of("devices") or "devices"
    if npus is None:
        for variable in ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES"):
            npus = _count(environ.get(variable) or settings.env.get(variable))
            if npus is not None:
                npus_source = variable
                break
    return Role(name, source, group_size, leader, npus, npus_source)


def builtin(source: str | None) -> bool:
    """Whether a value comes from a built-in profile (a default the role may replace) or was set."""
    return source is not None and source.startswith("profile ") and f"({profiles.builtin_dir()}/" in source


def _user_set(source_of: SourceOf, key: str) -> bool:
    source = source_of(key)
    return source is not None and not builtin(source)


def parallel_flags(role: Role, vllm: dict[str, Any], source_of: SourceOf) -> dict[str, str]:
    """The leader's defaults for the Ray layout (also applied on workers, so both validate the same
    configuration). Returns why each flag it set was set, by dotted key."""
    why: dict[str, str] = {}
    backend_key = "vllm.distributed_executor_backend"
    backend = vllm.get("distributed_executor_backend")
    if backend not in (None, "ray") and _user_set(source_of, backend_key):
        raise ConfigError(
            "multi-node serving runs vLLM's workers on Ray",
            key=backend_key,
            value=backend,
            source=source_of(backend_key),
            fix="remove it (the role sets ray), or run a single node: --role single",
        )
    if backend != "ray":
        vllm["distributed_executor_backend"] = "ray"
        why[backend_key] = f"role {role.name}: vLLM's workers run on Ray"
    nodes, npus = role.group_size, role.npus_per_node
    tp_key, pp_key = "vllm.tensor_parallel_size", "vllm.pipeline_parallel_size"
    if not _user_set(source_of, tp_key):
        if npus is not None:
            vllm["tensor_parallel_size"] = npus
            why[tp_key] = f"role {role.name}: the NPUs of one node ({role.npus_source})"
        elif role.name == "leader":
            raise ConfigError(
                "the leader cannot tell how many NPUs each node has",
                key="ray.npus_per_node",
                source=role.source,
                fix="set LAUNCH_RAY__NPUS_PER_NODE to the pod's NPU count (its huawei.com/ascend-1980 "
                "limit), or ASCEND_RT_VISIBLE_DEVICES, or vllm.tensor_parallel_size",
            )
    if not _user_set(source_of, pp_key) and nodes is not None:
        vllm["pipeline_parallel_size"] = nodes
        why[pp_key] = f"role {role.name}: one pipeline stage per node ({nodes} nodes)"
    tp, pp = vllm.get("tensor_parallel_size"), vllm.get("pipeline_parallel_size") or 1
    if isinstance(tp, int) and isinstance(pp, int) and nodes is not None and npus is not None:
        _check_fit(tp, pp, nodes, npus, source_of)
    return why


def _check_fit(tp: int, pp: int, nodes: int, npus: int, source_of: SourceOf) -> None:
    if tp * pp <= nodes * npus:
        return
    tp_key, pp_key = "vllm.tensor_parallel_size", "vllm.pipeline_parallel_size"
    key = tp_key if _user_set(source_of, tp_key) else pp_key
    raise ConfigError(
        f"tensor_parallel_size × pipeline_parallel_size = {tp} × {pp} = {tp * pp} NPUs, but the group has "
        f"{nodes} nodes × {npus} NPUs = {nodes * npus}",
        key=key,
        value=tp if key == tp_key else pp,
        source=source_of(key),
        fix="leave both unset (tp = NPUs per node, pp = nodes), or make their product fit the group",
    )


def head_address(settings: LaunchSettings) -> str:
    """How processes on the leader reach its head. Ray turns 127.0.0.1 into the node's address itself."""
    return join_address(settings.ray.node_ip or "127.0.0.1", settings.ray.port)


def environment(role: Role, settings: LaunchSettings) -> dict[str, str]:
    """Variables both sides need before Ray starts (Ray's workers inherit them from the raylet)."""
    env = {
        # vllm-ascend: Ray must not rewrite ASCEND_RT_VISIBLE_DEVICES for each worker it starts.
        "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    node_ip = settings.ray.node_ip
    if node_ip:
        env["VLLM_HOST_IP"] = node_ip  # vLLM's workers must agree with Ray on this node's address
        env["HCCL_IF_IP"] = node_ip  # the host NIC HCCL uses for its connection set-up
    if role.name == "leader":
        env["RAY_ADDRESS"] = head_address(settings)  # vLLM's ray.init() joins this head, never a new one
    return env


def join_address(host: str, port: int) -> str:
    """host:port, unless the host already names a port; IPv6 addresses in brackets."""
    if host.count(":") == 1 or (host.startswith("[") and "]:" in host):
        return host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _ray_cli(settings: LaunchSettings, python: str) -> list[str]:
    if not settings.ray.command:
        return [python, "-m", RAY_MODULE]
    try:
        program = shlex.split(settings.ray.command)
    except ValueError as exc:
        raise ConfigError(
            f"cannot split the Ray command: {exc}", key="ray.command", value=settings.ray.command
        ) from None
    if not program:
        raise ConfigError("the Ray command is empty", key="ray.command", value="", fix="remove it to use the default")
    return program


def _start_options(role: Role, settings: LaunchSettings) -> list[str]:
    ray = settings.ray
    options = ["--disable-usage-stats"]
    if role.npus_per_node is not None:
        options.append("--resources=" + json.dumps({"NPU": role.npus_per_node}))
    if ray.node_ip:
        options.append(f"--node-ip-address={ray.node_ip}")
    if ray.temp_dir:
        options.append(f"--temp-dir={ray.temp_dir}")
    return options + list(ray.args or [])


def ray_plan(role: Role, settings: LaunchSettings, python: str) -> tuple[RayPlan, list[str]]:
    """The RayPlan, and for a worker the argv the supervisor runs (the leader's argv is vLLM's)."""
    ray = settings.ray
    cli = _ray_cli(settings, python)

    def plan(**more: Any) -> RayPlan:
        return RayPlan(
            group_size=role.group_size,
            npus_per_node=role.npus_per_node,
            wait_timeout=ray.wait_timeout,
            poll_interval=ray.poll_interval,
            stop_timeout=ray.stop_timeout,
            **more,
        )

    if role.name == "leader":
        address = head_address(settings)
        head = [*cli, "start", "--head", f"--port={ray.port}", *_start_options(role, settings)]
        status = [*cli, "status", f"--address={address}"]
        return plan(role="leader", address=address, head_argv=head, status_argv=status), []
    address = join_address(str(role.leader_address), ray.port)
    argv = [*cli, "start", f"--address={address}", "--block", *_start_options(role, settings)]
    return plan(role="worker", address=address), argv


_COUNT_LINE = re.compile(r"^\s*(\d+)\s+\S")
_NPU_LINE = re.compile(r"^\s*[\d.]+/([\d.]+)\s+NPU\s*$", re.MULTILINE)
_LIVE_SECTIONS = ("active", "idle")  # Ray's autoscaler v2 lists idle nodes apart from active ones


def parse_status(text: str) -> tuple[int, float | None]:
    """(nodes alive, NPUs in the cluster) from `ray status`: the node lines under "Active:" (and "Idle:"),
    and the total of the "used/total NPU" line. Headings are matched by name, not position."""
    nodes, section = 0, ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith(":") and not stripped[:1].isdigit():
            section = stripped[:-1].strip().lower()
            continue
        if section in _LIVE_SECTIONS:
            match = _COUNT_LINE.match(line)
            if match:
                nodes += int(match.group(1))
    npus = _NPU_LINE.search(text)
    return nodes, float(npus.group(1)) if npus else None
