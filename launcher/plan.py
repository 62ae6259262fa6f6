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

        return {
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

    def to_json(self, *, masked: bool = True) -> str:
        return json.dumps(self.to_dict(masked=masked), indent=2, ensure_ascii=False)
