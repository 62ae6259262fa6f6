"""The Plan: plain data that says exactly what `run` will start. Computed without side effects."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher.settings import NpuSettings, SupervisorSettings

MASK = "***"


@dataclass(frozen=True)
class CachePlan:
    """The graph-compile cache entry this start uses: LAUNCH_CACHE_DIR/<fingerprint>/data."""

    root: str
    fingerprint: str
    inputs: dict[str, Any]
    max_entries: int | None = None
    max_bytes: int | None = None
    wait: float = 1800.0

    @property
    def entry(self) -> str:
        return f"{self.root.rstrip('/')}/{self.fingerprint}"

    @property
    def data(self) -> str:
        return f"{self.entry}/data"


@dataclass(frozen=True)
class RayPlan:
    """Multi-node serving on Ray: the head the leader starts and the group it waits for, or the head a
    worker joins. The worker's `ray start --block` itself is the plan's argv (the supervised child)."""

    role: str  # leader | worker
    address: str  # host:port of the head (the GCS), as the workers reach it
    group_size: int | None  # nodes in the group, leader included (None: a worker that need not know)
    npus_per_node: int | None  # None: Ray counts them itself
    head_argv: list[str] = field(default_factory=list)  # leader: `ray start --head ...`
    status_argv: list[str] = field(default_factory=list)  # leader: `ray status --address=...`
    wait_timeout: float = 900.0
    poll_interval: float = 5.0
    stop_timeout: float = 15.0

    @property
    def expected_npus(self) -> int | None:
        if self.group_size is None or self.npus_per_node is None:
            return None
        return self.group_size * self.npus_per_node

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "address": self.address,
            "group_size": self.group_size,
            "npus_per_node": self.npus_per_node,
            "head_argv": list(self.head_argv),
            "status_argv": list(self.status_argv),
            "wait_timeout": self.wait_timeout,
        }


@dataclass(frozen=True)
class Plan:
    argv: list[str]
    env: dict[str, str]  # only the variables the launcher sets or changes
    cwd: str | None
    dialect: str
    profiles: list[str]
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    entrypoint: str = "openai"
    model: str | None = None
    served_model_name: str | None = None  # the name requests must use (warm-up)
    host: str = "0.0.0.0"
    port: int = 8000
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    status_port: int | None = None
    cache: CachePlan | None = None
    extra_args: list[str] = field(default_factory=list)
    devices: list[int] | None = None  # logical NPU indices vLLM uses (Ascend); None: not known here
    npu: NpuSettings = field(default_factory=NpuSettings)  # the device preflight (launcher/npu.py)
    sources: dict[str, str] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()  # values never shown in clear
    role: str = "single"  # single | leader | worker (multi-node on Ray)
    ray: RayPlan | None = None
    # How the supervisor knows the child serves: "http" probes /health; "process" (a Ray worker, which
    # serves nothing itself) counts it ready once started and healthy while it runs.
    probe: str = "http"
    # Exit statuses that mean a clean stop when the launcher asked for one (`ray start --block` exits 1
    # after SIGTERM by design): the launcher then exits 0, as after vLLM's own clean stop.
    clean_stop_codes: frozenset[int] = frozenset()

    @property
    def health_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/health"

    def child_environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """The full environment of the child: the container's, with the plan's changes applied."""
        merged = dict(base)
        merged.update(self.env)
        return merged

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, MASK)
        return text

    def to_dict(self, *, masked: bool = True) -> dict[str, Any]:
        def m(text: str) -> str:
            return self.mask(text) if masked else text

        data: dict[str, Any] = {
            "argv": [m(a) for a in self.argv],
            "env": {k: m(v) for k, v in sorted(self.env.items())},
            "cwd": self.cwd,
            "dialect": self.dialect,
            "profiles": list(self.profiles),
            "warnings": [m(w) for w in self.warnings],
            "info": [m(i) for i in self.info],
            "entrypoint": self.entrypoint,
            "health_url": self.health_url,
            "supervisor": self.supervisor.model_dump(),
            "cache": {"dir": self.cache.data, "fingerprint": self.cache.fingerprint} if self.cache else None,
            "sources": {k: m(v) for k, v in sorted(self.sources.items())},
        }
        if self.ray is not None:  # multi-node only: single-node plans render as they always did
            data["role"] = self.role
            data["ray"] = self.ray.to_dict()
        return data

    def to_json(self, *, masked: bool = True) -> str:
        return json.dumps(self.to_dict(masked=masked), indent=2, ensure_ascii=False)
