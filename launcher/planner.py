"""Settings → rules → Plan. Pure: reads only the files it is pointed at (profiles, config.json)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from launcher import cann, dialects, fingerprint, flags, profiles, roles, rules
from launcher.errors import ConfigError, PreflightError
from launcher.host import HostFacts
from launcher.layers import Layer, Merged, environment_layer, merge, set_option_layer
from launcher.logs import SECRET_ENV
from launcher.modelinfo import ModelDirError, ModelInfo, read_model
from launcher.plan import CachePlan, Plan
from launcher.settings import LaunchSettings

DEFAULT_PROFILE = "base"
SERVER_MODULES = {
    "openai": "vllm.entrypoints.openai.api_server",
    "api_server": "vllm.entrypoints.api_server",
}
# Flags only the 0.6 dialect has that are tuning hints elsewhere: dropped with a warning.
DROPPED_ON_V1 = {
    "num_scheduler_steps": "multi-step scheduling was removed in vLLM V1 (it schedules asynchronously)",
    "multi_step_stream_outputs": "multi-step scheduling was removed in vLLM V1",
    "disable_async_output_proc": "vLLM V1 has no async output processing switch",
    "disable_log_requests": "recent vLLM logs no requests unless --enable-log-requests is given",
    "use_v2_block_manager": "vLLM V1 has only one block manager",
    "swap_space": "vLLM V1 does not swap KV blocks to host memory",
}
LEGACY_SPECULATIVE = {
    "speculative_model": "model",
    "num_speculative_tokens": "num_tokens",
    "speculative_draft_tensor_parallel_size": "draft_tensor_parallel_size",
}
CONFIG_SPECULATIVE = {
    "model": "model",
    "num_speculative_tokens": "num_tokens",
    "draft_tensor_parallel_size": "draft_tensor_parallel_size",
    "method": "method",
}
SECRET_FLAGS = ("api_key",)


@dataclass
class Request:
    """What the user asked for on the command line (environment comes with HostFacts)."""

    profiles: list[str] = field(default_factory=list)
    config: str | None = None
    model: str | None = None
    dialect: str | None = None
    role: str | None = None
    sets: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)


@dataclass
class Resolved:
    settings: LaunchSettings
    merged: Merged
    profiles: list[str]
    warnings: list[str]


def profile_refs(request: Request, environ: Mapping[str, str]) -> tuple[list[str], str]:
    if request.profiles:
        return request.profiles, "--profile"
    env = environ.get("LAUNCH_PROFILE", "").strip()
    if env:
        return [p.strip() for p in env.split(",") if p.strip()], "LAUNCH_PROFILE"
    return [DEFAULT_PROFILE], "default profile"


def resolve(request: Request, environ: Mapping[str, str]) -> Resolved:
    """Merge every layer in precedence order and validate the result."""
    refs, origin = profile_refs(request, environ)
    chosen = profiles.expand(refs, origin=origin)
    layers = profiles.layers_for(chosen)
    config = request.config or environ.get("LAUNCH_CONFIG") or None
    if config:
        origin = "--config" if request.config else "LAUNCH_CONFIG"
        user = profiles.expand([config if profiles.looks_like_path(config) else f"./{config}"], origin=origin)
        layers += [Layer(f"{origin} {p.path}", p.document) for p in user]
    env_layer, warnings = environment_layer(environ)
    layers.append(env_layer)
    cli: dict[str, Any] = {}
    cli_sources: dict[str, str] = {}
    if request.model is not None:
        cli["model"], cli_sources["model"] = request.model, "--model"
    if request.dialect is not None:
        cli["dialect"], cli_sources["dialect"] = request.dialect, "--dialect"
    if request.role is not None:
        cli["role"], cli_sources["role"] = request.role, "--role"
    layers.append(Layer("command line", cli, cli_sources))
    layers.append(set_option_layer(request.sets))
    merged = merge(layers)
    try:
        settings = LaunchSettings(**merged.data)
    except ValidationError as exc:
        raise _config_error(exc, merged) from None
    return Resolved(settings, merged, [p.name for p in chosen], warnings)


def _config_error(exc: ValidationError, merged: Merged) -> ConfigError:
    error = exc.errors()[0]
    key = ".".join(str(p) for p in error["loc"])
    value = error.get("input")
    if isinstance(value, dict):
        value = None
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        parent = key.rsplit(".", 1)[0] if "." in key else "top level"
        message = f"unknown setting in {parent}"
        fix = "check the spelling against `launch profiles show base` and DESIGN's profile keys"
    else:
        fix = f"change it: {message[0].lower()}{message[1:]}"
    return ConfigError(message, key=key, value=value, source=merged.source_of(key), fix=fix)


def target_dialect(
    resolved: Resolved, host: HostFacts, *, fallback_warnings: list[str] | None = None
) -> dialects.Dialect:
    """The dialect asked for (--dialect, LAUNCH_DIALECT, a profile) or detected, within the profiles' limits.

    With `fallback_warnings` (render: showing a plan needs no vLLM here) an undetectable dialect falls
    back to the newest Ascend one the profiles allow, with a warning; otherwise it is exit 3."""
    settings, merged = resolved.settings, resolved.merged
    try:
        name = settings.dialect or dialects.detect(host.installed)
    except PreflightError as exc:
        if fallback_warnings is None:
            raise
        allowed = [d for d in dialects.DIALECTS if all(d in supported for supported, _ in merged.dialect_limits)]
        name = "vllm-ascend" if "vllm-ascend" in allowed else (allowed or ["vllm-ascend"])[0]
        fallback_warnings.append(f"{exc.what}; rendered for {name}: pass --dialect (or LAUNCH_DIALECT) to choose")
    dialect = dialects.get(name, merged.source_of("dialect") or "detected from installed packages")
    for supported, where in merged.dialect_limits:
        if dialect.name not in supported:
            raise ConfigError(
                f"{where} does not support dialect {dialect.name} (it supports {', '.join(supported)})",
                key="dialect",
                value=dialect.name,
                source=merged.source_of("dialect") or "detected from installed packages",
                fix="pick a profile made for this dialect (`launch profiles`), or --dialect one it supports",
            )
    return dialect


def build(request: Request, host: HostFacts, *, strict: bool, resolved: Resolved | None = None) -> Plan:
    """The whole plan. `strict` (check, run) turns missing files into exit 3 instead of warnings.
    `resolved` saves resolving again when the caller needed the settings first (to gather host facts)."""
    resolved = resolved or resolve(request, host.environ)
    settings, merged = resolved.settings, resolved.merged
    warnings = list(resolved.warnings)
    dialect = target_dialect(resolved, host, fallback_warnings=None if strict else warnings)

    vllm_raw = dict(settings.vllm)
    model_path = settings.model or vllm_raw.pop("model", None)
    vllm_raw.pop("model", None)
    # `auto` becomes the number of selected NPUs (rules.devices); a placeholder keeps the flag's place.
    tp_auto = str(vllm_raw.get("tensor_parallel_size", "")).strip().lower() == "auto"
    if tp_auto:
        vllm_raw["tensor_parallel_size"] = 1
    if not model_path:
        raise ConfigError(
            "no model given",
            key="model",
            fix="pass --model /path/to/model (a Hugging Face directory) or set LAUNCH_MODEL",
        )
    model_path = str(model_path)
    model = _read_model(model_path, merged.source_of("model") or merged.source_of("vllm.model"), strict, warnings)

    vllm = _typed_flags(vllm_raw, dialect, settings.entrypoint, merged, warnings)
    role = roles.decide(settings, host.environ, merged.source_of)
    role_set = roles.parallel_flags(role, vllm, merged.source_of) if role.multi_node else {}
    spec = _speculative(settings, vllm, merged)
    env = dict(settings.env)
    env_sources = {k: merged.source_of(f"env.{k}") or "profile" for k in env}
    if role.multi_node:
        for key, value in roles.environment(role, settings).items():
            if key not in env:
                env[key], env_sources[key] = value, f"role {role.name}"
    draft = rules.Draft(
        dialect=dialect,
        entrypoint=settings.entrypoint,
        model_path=model_path,
        model=model,
        vllm=vllm,
        graph_mode=settings.graph.mode,
        gears=list(settings.graph.decode_gears) if settings.graph.decode_gears is not None else None,
        spec=spec,
        env=env,
        env_sources=env_sources,
        host=host,
        strict=strict,
        source_of=merged.source_of,
        warnings=warnings,
        devices=settings.devices,
        tp_auto=tp_auto,
        env_files=list(settings.env_files),
        nodes=role.group_size or 1,
    )
    if role.multi_node:
        draft.info.append(f"role {role.name} ({role.source})")
        draft.info.extend(f"set {key}={vllm[key.removeprefix('vllm.')]}: {why}" for key, why in role_set.items())
    rules.apply(draft)

    graph_env, graph_warnings = dialects.graph_flags(dialect, draft.graph_mode, draft.gears, draft.vllm)
    _add_env(draft, graph_env, "graph")
    draft.warnings.extend(graph_warnings)
    if draft.spec is not None:
        _add_env(draft, dialects.speculative_flags(dialect, draft.spec, draft.vllm), "speculative")

    # What CANN's scripts set comes first: profiles and rules may override it, like exports after `source`.
    plan_env = {**host.cann.changes, **_container_wins(draft, merged, host)}
    cache = _cache_plan(settings, dialect, draft, plan_env, host, model_path, request.extra_args)
    if cache is not None and role.name == "worker":
        # Nothing on a worker says when its graphs are complete (vLLM's API is on the leader): an entry
        # marked complete at `ray start` could be reused half built. Workers compile where vLLM defaults.
        cache = None
        draft.info.append("cache_dir is not used on a Ray worker: vLLM compiles into its default directories")
    cwd = None
    if cache is not None:
        cwd, cache_env = _cache_location(dialect, cache)
        plan_env.update(cache_env)
        if cwd is not None:
            model_path = os.path.abspath(model_path)  # the child starts elsewhere
    argv = _argv(settings, dialect, model_path, draft.vllm, host, request.extra_args)
    secrets = _secrets(draft.vllm, plan_env, request.extra_args)
    served = draft.vllm.get("served_model_name")
    ray_plan, supervisor, probe, clean_stop = None, settings.supervisor, "http", frozenset[int]()
    if role.multi_node:
        ray_plan, worker_argv = roles.ray_plan(role, settings, host.python)
        if role.name == "worker":
            # Ray starts vLLM's workers on this node; the supervised child is the node's `ray start --block`.
            argv, probe, clean_stop = worker_argv, "process", roles.WORKER_CLEAN_STOP
            supervisor = settings.supervisor.model_copy(update={"warmup": False})
    return Plan(
        argv=argv,
        env=plan_env,
        cwd=cwd,
        dialect=dialect.name,
        profiles=resolved.profiles,
        warnings=draft.warnings,
        info=draft.info,
        entrypoint=settings.entrypoint,
        model=model_path,
        served_model_name=served[0] if isinstance(served, list) and served else model_path,
        host=str(draft.vllm.get("host") or "0.0.0.0"),
        port=int(draft.vllm["port"]) if draft.vllm.get("port") is not None else 8000,
        supervisor=supervisor,
        status_port=settings.status_port,
        cache=cache,
        extra_args=list(request.extra_args),
        devices=draft.selection.indices if draft.selection is not None else None,
        npu=settings.npu,
        sources={k: v for k, v in merged.sources.items() if _present(merged.data, k)} | role_set,
        secrets=frozenset(secrets),
        role=role.name,
        ray=ray_plan,
        probe=probe,
        clean_stop_codes=clean_stop,
    )


def _cache_plan(
    settings: LaunchSettings,
    dialect: dialects.Dialect,
    draft: rules.Draft,
    plan_env: dict[str, str],
    host: HostFacts,
    model_path: str,
    extra_args: list[str],
) -> CachePlan | None:
    if not settings.cache_dir:
        return None
    inputs = fingerprint.graph_inputs(
        dialect=dialect.name,
        vllm=draft.vllm,
        env={**host.environ, **plan_env},
        installed=host.installed,
        cann_version=_cann_version(settings, dialect, host),
        model_path=model_path,
        extra_args=extra_args,
    )
    return CachePlan(
        root=os.path.abspath(settings.cache_dir),
        fingerprint=fingerprint.fingerprint(inputs),
        inputs=inputs,
        max_entries=settings.cache.max_entries,
        max_bytes=settings.cache.max_bytes,
        wait=settings.cache.wait,
    )


def _cann_version(settings: LaunchSettings, dialect: dialects.Dialect, host: HostFacts) -> str | None:
    """CANN's version for the fingerprint, the same for render (nothing sourced) and run."""
    if not dialect.ascend:
        return None
    if host.cann.version:
        return host.cann.version
    home, _ = cann.find_toolkit(settings.cann.toolkit_home, host.environ)
    return cann.toolkit_version(home)


def _cache_location(dialect: dialects.Dialect, cache: CachePlan) -> tuple[str | None, dict[str, str]]:
    """Where each dialect's child writes compiled graphs, pointed into the entry."""
    if dialect.name == "ascend-vllm-0.6":
        return cache.data, {}  # vLLM 0.6.3 writes .torchair_cache into its working directory
    if dialect.name == "vllm-ascend-torchair":
        return None, {"TORCHAIR_CACHE_HOME": cache.data}
    return None, {"VLLM_CACHE_ROOT": f"{cache.data}/vllm", "TORCHINDUCTOR_CACHE_DIR": f"{cache.data}/inductor"}


def _read_model(path: str, source: str | None, strict: bool, warnings: list[str]) -> ModelInfo | None:
    try:
        return read_model(path)
    except ModelDirError as exc:
        if strict:
            raise PreflightError(
                exc.what,
                key="model",
                value=path,
                source=source,
                fix="mount the model (a Hugging Face directory with config.json) at that path, "
                "or point --model / LAUNCH_MODEL at it",
            ) from None
        warnings.append(f"model {path}: {exc.what}; checks that need config.json were skipped")
        return None


def _typed_flags(
    raw: dict[str, Any], dialect: dialects.Dialect, entrypoint: str, merged: Merged, warnings: list[str]
) -> dict[str, Any]:
    legacy = entrypoint == "api_server" and dialect.legacy_api_server  # else the entrypoint rule refuses
    catalogue_name = f"{dialect.flags}_api_server" if legacy else dialect.flags
    catalogue = flags.catalogue(catalogue_name)
    known_anywhere = flags.all_names()
    typed: dict[str, Any] = {}
    for raw_name, value in raw.items():
        name = str(raw_name).replace("-", "_")
        key = f"vllm.{name}"
        source = merged.source_of(f"vllm.{raw_name}")
        if name in LEGACY_SPECULATIVE or name == "speculative_config":
            typed[name] = value  # normalised into the speculative section below
            continue
        spec = catalogue.get(name)
        if spec is None and name in known_anywhere:
            if name in DROPPED_ON_V1 and not dialect.multi_step:
                warnings.append(f"{key} dropped for {dialect.name}: {DROPPED_ON_V1[name]}")
                continue
            raise ConfigError(
                f"{dialect.name}'s vLLM has no {flags.option(name)} flag",
                key=key,
                value=value,
                source=source,
                fix="remove it for this dialect, or use --dialect for the vLLM that has it",
            )
        if spec is None:
            hint = flags.suggest(name, frozenset(catalogue))
            warnings.append(
                f"{key} is not a flag of {dialect.name}'s vLLM"
                + (f" (did you mean {hint}?)" if hint else "")
                + "; passed through as "
                + flags.option(name)
            )
        typed[name] = flags.coerce(name, value, spec, source)
    return typed


def _speculative(settings: LaunchSettings, vllm: dict[str, Any], merged: Merged) -> dict[str, Any] | None:
    """One speculative spec from the semantic section, the 0.6 flags or --speculative-config."""
    spec: dict[str, Any] = {k: v for k, v in settings.speculative.model_dump().items() if v is not None}
    for flag, field_name in LEGACY_SPECULATIVE.items():
        if flag in vllm:
            value = vllm.pop(flag)
            if flag != "speculative_model":
                value = flags.coerce(flag, value, {"kind": "int"}, merged.source_of(f"vllm.{flag}"))
            spec[field_name] = value
    if "speculative_config" in vllm:
        config = flags.coerce(
            "speculative_config",
            vllm.pop("speculative_config"),
            {"kind": "json"},
            merged.source_of("vllm.speculative_config"),
        )
        extra = {}
        for key, value in config.items():
            if key in CONFIG_SPECULATIVE:
                spec.setdefault(CONFIG_SPECULATIVE[key], value)
            else:
                extra[key] = value
        if extra:
            spec["extra"] = extra
    if spec.get("model") == "[ngram]":
        spec["method"], spec["model"] = "ngram", None
    if not spec or (set(spec) <= {"draft_tensor_parallel_size", "extra"} and not spec.get("extra")):
        return None
    return spec


def _add_env(draft: rules.Draft, env: dict[str, str], why: str) -> None:
    for key, value in env.items():
        draft.env[key] = value
        draft.env_sources[key] = why


def _argv(
    settings: LaunchSettings,
    dialect: dialects.Dialect,
    model_path: str,
    vllm: dict[str, Any],
    host: HostFacts,
    extra: list[str],
) -> list[str]:
    if settings.server_command:
        try:
            program = shlex.split(settings.server_command)
        except ValueError as exc:
            raise ConfigError(
                f"cannot split the server command: {exc}",
                key="server_command",
                value=settings.server_command,
                fix="quote it as a shell would, e.g. 'numactl -N 0 python -m vllm.entrypoints.openai.api_server'",
            ) from None
        if not program:
            raise ConfigError("the server command is empty", key="server_command", value="")
    else:
        program = [host.python, "-m", SERVER_MODULES[settings.entrypoint]]
    catalogue = flags.catalogue(dialect.flags)
    argv = [*program, f"--model={model_path}"]
    for name, value in vllm.items():
        argv += flags.render(name, value, catalogue.get(name))
    return argv + list(extra)


def _container_wins(draft: rules.Draft, merged: Merged, host: HostFacts) -> dict[str, str]:
    """The planned variables the child gets from the launcher (see Draft.container_wins)."""
    plan_env: dict[str, str] = {}
    for key, value in sorted(draft.env.items()):
        if draft.container_wins(key):
            have = host.environ[key]
            if have != value:
                source = draft.env_sources.get(key, "")
                draft.warnings.append(
                    f"{key}={have} from the container environment wins over {key}={value} (from {source})"
                )
            continue
        plan_env[key] = value
    return plan_env


def _secrets(vllm: dict[str, Any], env: dict[str, str], extra: list[str]) -> set[str]:
    found: set[str] = set()
    for name in SECRET_FLAGS:
        value = vllm.get(name)
        if isinstance(value, list):
            found.update(str(v) for v in value)
        elif value:
            found.add(str(value))
    found.update(v for k, v in env.items() if SECRET_ENV.search(k))
    for i, arg in enumerate(extra):
        if arg.startswith("--") and SECRET_ENV.search(arg.split("=", 1)[0].lstrip("-").replace("-", "_")):
            if "=" in arg:
                found.add(arg.split("=", 1)[1])
            elif i + 1 < len(extra):
                found.add(extra[i + 1])
    return {s for s in found if s}


def _present(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
