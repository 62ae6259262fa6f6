"""The launcher's configuration model: one typed tree that every layer (profiles, file, env, CLI) fills.

Values arrive as a merged dict with provenance (see `layers.py`); this module only says what a valid
tree looks like. `vllm:` stays an open mapping because any vLLM flag may appear there; its values are
checked against the flag catalogue in `flags.py`.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Restart = Literal["never", "on-failure", "always"]
Role = Literal["auto", "single", "leader", "worker"]
GraphMode = Literal["auto", "eager", "torchair", "aclgraph"]
SpeculativeMethod = Literal["draft", "eagle", "ngram"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from 30, 2.5, "30s", "5m", "1h" or "500ms"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30s' or '5m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("expected a duration such as 30, '30s' or '5m'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(text: str) -> int:
    """Bytes from 1048576, 500M, 10G, 1.5T (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 500M or 10G")
    unit = (match.group(2) or "B")[0].upper()
    scale = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    return int(float(match.group(1)) * scale)


# Seconds, also written as "30s", "5m", "1h" in profiles, --set and LAUNCH_* variables.
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SupervisorSettings(_Section):
    """How `launch run` starts, watches, stops and restarts vLLM."""

    restart: Restart = "on-failure"
    max_restarts: int = Field(default=5, ge=0)
    restart_window: Duration = 600.0  # seconds in which max_restarts count
    start_timeout: Duration = 1800.0  # large models plus graph compilation take many minutes
    stop_timeout: Duration = 30.0
    health_interval: Duration = 10.0
    health_timeout: Duration = 5.0
    unhealthy_after: int = Field(default=3, ge=1)
    warmup: bool = False
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0
    termination_log: str = "/dev/termination-log"


class CacheSettings(_Section):
    """Limits of LAUNCH_CACHE_DIR, applied at start (least recently used entries go first)."""

    max_entries: int | None = Field(default=None, ge=1)
    max_bytes: int | None = Field(default=None, ge=0)
    wait: Duration = 1800.0  # how long a start waits for another launcher building the same entry

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().isdigit():
            return parse_size(value)
        return value


class GraphSettings(_Section):
    """Graph compilation, rendered per dialect (env vars, additional_config or compilation_config)."""

    mode: GraphMode = "auto"
    decode_gears: list[int] | None = None

    @field_validator("decode_gears", mode="before")
    @classmethod
    def _gear_text(cls, value: Any) -> Any:
        # From --set or the environment: "2,4,8" or "[2, 4, 8]".
        if isinstance(value, str):
            return [part for part in re.split(r"[\s,\[\]]+", value) if part]
        return value


class SpeculativeSettings(_Section):
    """Speculative decoding, rendered as 0.6 flags or as --speculative-config JSON."""

    method: SpeculativeMethod | None = None
    model: str | None = None
    num_tokens: int | None = Field(default=None, ge=1)
    draft_tensor_parallel_size: int | None = Field(default=None, ge=1)


class RaySettings(_Section):
    """Multi-node serving on Ray (`role: leader|worker`); unset values come from LeaderWorkerSet's
    LWS_GROUP_SIZE and LWS_LEADER_ADDRESS, and from the NPUs visible to the container."""

    port: int = Field(default=6379, ge=1, le=65535)  # the head's GCS port, which workers join
    group_size: int | None = Field(default=None, ge=1)  # nodes in the group, leader included
    leader_address: str | None = None  # host the workers join (LWS: the leader pod's DNS name)
    npus_per_node: int | None = Field(default=None, ge=1)
    node_ip: str | None = None  # --node-ip-address (the pod IP when a node has several interfaces)
    wait_timeout: Duration = 900.0  # leader: until every node and NPU joined; worker: until the head answers
    poll_interval: Duration = 5.0
    stop_timeout: Duration = 15.0  # the head's processes: SIGTERM, then SIGKILL after this long
    temp_dir: str | None = None  # --temp-dir (Ray's sessions, sockets and logs)
    command: str | None = None  # the Ray CLI, shell-split; default: this Python's `-m ray.scripts.scripts`
    args: list[str] | None = None  # more `ray start` arguments (ports, --num-cpus, ...), a list or one string

    @field_validator("args", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # From --set or the environment: one shell-quoted string.
        if isinstance(value, str):
            return shlex.split(value)
        return value


class CannSettings(_Section):
    """Where CANN's environment scripts are; None searches the standard places (see `launcher/cann.py`)."""

    toolkit_home: str | None = None  # e.g. /usr/local/Ascend/ascend-toolkit (its set_env.sh is sourced)
    nnal_home: str | None = None  # e.g. /usr/local/Ascend/nnal (atb/set_env.sh is sourced)
    source_timeout: Duration = 30.0


class NpuSettings(_Section):
    """npu-smi and the device preflight before each start of vLLM (see `launcher/npu.py`)."""

    smi: str = "npu-smi"  # the program, looked up on PATH
    smi_timeout: Duration = 10.0  # a driver in trouble can make npu-smi hang
    kill_leftovers: bool = True  # stop this launcher's own earlier vLLM processes that still hold NPUs
    free_timeout: Duration = 60.0  # how long to wait for their memory to be released


class LaunchSettings(BaseSettings):
    """The resolved configuration. Built from merged layers, never read directly from the environment:
    the `LAUNCH_*` layer is produced by `layers.environment_layer` with this model's env settings."""

    model_config = SettingsConfigDict(
        env_prefix="LAUNCH_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    model: str | None = None
    entrypoint: Literal["openai", "api_server"] = "openai"
    dialect: str | None = None
    dialects: list[str] | None = None  # dialects a profile supports; None = all
    server_command: str | None = None
    role: Role = "auto"  # single | leader | worker; auto: from LeaderWorkerSet's LWS_* variables
    ray: RaySettings = Field(default_factory=RaySettings)
    vllm: dict[str, Any] = Field(default_factory=dict)
    graph: GraphSettings = Field(default_factory=GraphSettings)
    speculative: SpeculativeSettings = Field(default_factory=SpeculativeSettings)
    env: dict[str, str] = Field(default_factory=dict)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    log_format: Literal["json", "console"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    status_port: int | None = Field(default=None, ge=0, le=65535)
    cache_dir: str | None = None
    cache: CacheSettings = Field(default_factory=CacheSettings)
    devices: str = "auto"  # NPUs for vLLM: auto (all visible) or logical indices "0,1,2,3"
    # Sourced with bash before start, after which CANN's own scripts run if still needed (~/.bashrc).
    env_files: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cann: CannSettings = Field(default_factory=CannSettings)
    npu: NpuSettings = Field(default_factory=NpuSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], *sources: Any, **named: Any) -> Any:
        # Only the merged layers count: reading the environment here again would lose provenance.
        return (named.get("init_settings", sources[0] if sources else None),)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("devices", mode="before")
    @classmethod
    def _device_text(cls, value: Any) -> Any:
        # YAML `devices: 0` is an int and `devices: [0, 1]` a list; keep the comma-separated spelling.
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return value

    @field_validator("env_files", mode="before")
    @classmethod
    def _file_list(cls, value: Any) -> Any:
        # From --set or LAUNCH_ENV_FILES: "a,b" or a JSON list.
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        # YAML turns `1` into an int and `true` into a bool; environment variables are strings.
        if isinstance(value, dict):
            return {k: _env_text(v) for k, v in value.items()}
        return value


def _env_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return str(value)
    return value


# Keys a profile document may hold besides the settings themselves.
PROFILE_ONLY_KEYS = frozenset({"description", "extends"})
