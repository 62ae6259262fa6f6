"""Configuration layers and their merge, remembering where every value came from.

Precedence, lowest first: built-in defaults < profiles (in order, `extends` first) < the user profile
file (--config) < LAUNCH_* environment < command line. A later layer's mapping is merged into the
earlier ones key by key; a `null` value removes what lower layers set. `dialects` (which dialects a
profile supports) is intersected rather than replaced, so composing profiles can only narrow it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_settings import EnvSettingsSource
from pydantic_settings.exceptions import SettingsError

from launcher.errors import ConfigError
from launcher.logs import MASK, SECRET_ENV
from launcher.settings import PROFILE_ONLY_KEYS, LaunchSettings

# Open mappings: their keys are data (vLLM flags, variable names), not settings fields.
OPEN_SECTIONS = frozenset({"vllm", "env"})
DELETE_WORDS = frozenset({"null", "none", "~"})
# LAUNCH_* variables that select layers rather than set values.
SELECTOR_VARIABLES = frozenset({"LAUNCH_PROFILE", "LAUNCH_CONFIG"})
# LAUNCH_* variables read by other parts (the demo, the tests' caches), not settings.
OTHER_VARIABLES = frozenset({"LAUNCH_DEMO_DIR", "LAUNCH_TEST_CACHE", "LAUNCH_CI_CACHE"})


@dataclass
class Layer:
    """One source of values: `data` is a nested mapping, `source` says where it came from."""

    source: str
    data: dict[str, Any]
    # Per-key source overrides inside the layer (the env layer names each variable).
    key_sources: dict[str, str] = field(default_factory=dict)

    def source_of(self, dotted: str) -> str:
        return self.key_sources.get(dotted, self.source)


@dataclass
class Merged:
    data: dict[str, Any]
    sources: dict[str, str]  # dotted key -> where its value came from
    dialect_limits: list[tuple[list[str], str]]  # (supported dialects, which layer said so)

    def source_of(self, dotted: str) -> str | None:
        """The source of a key, or of the nearest parent that was set as a whole."""
        parts = dotted.split(".")
        while parts:
            found = self.sources.get(".".join(parts))
            if found:
                return found
            parts.pop()
        return None


def merge(layers: list[Layer]) -> Merged:
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    limits: list[tuple[list[str], str]] = []
    for layer in layers:
        for key, value in layer.data.items():
            if key in PROFILE_ONLY_KEYS:
                continue
            if key == "dialects":
                if value is not None:
                    limits.append((list(value), layer.source_of(key)))
                continue
            _merge_into(data, sources, key, value, layer)
    return Merged(data, sources, limits)


def _merge_into(target: dict[str, Any], sources: dict[str, str], dotted: str, value: Any, layer: Layer) -> None:
    name = dotted.rsplit(".", 1)[-1]
    if value is None:
        target.pop(name, None)
        sources[dotted] = layer.source_of(dotted)
        for key in [k for k in sources if k.startswith(dotted + ".")]:
            del sources[key]
        return
    if isinstance(value, Mapping):
        existing = target.get(name)
        if not isinstance(existing, dict):
            existing = {}
            target[name] = existing
        for key, sub in value.items():
            _merge_into(existing, sources, f"{dotted}.{key}", sub, layer)
        return
    target[name] = value
    sources[dotted] = layer.source_of(dotted)


def set_option_layer(assignments: list[str]) -> Layer:
    """`--set vllm.max_model_len=8192` → a layer; values stay text and are typed by the schema."""
    data: dict[str, Any] = {}
    key_sources: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                "--set needs KEY=VALUE",
                key="--set",
                value=item,
                source="command line",
                fix="write it as --set vllm.max_model_len=8192 (dotted key, '=', value)",
            )
        parts = key.split(".")
        if any(not p for p in parts):
            raise ConfigError(
                "the key has an empty part",
                key="--set",
                value=item,
                source="command line",
                fix="use a dotted key such as vllm.max_model_len or env.HCCL_OP_EXPANSION_MODE",
            )
        if parts[0] not in OPEN_SECTIONS:
            parts = [p.lower().replace("-", "_") for p in parts]
        elif parts[0] == "vllm":
            parts = ["vllm", *[p.replace("-", "_") for p in parts[1:]]]
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = None if value.strip().lower() in DELETE_WORDS else value
        shown = MASK if SECRET_ENV.search(parts[-1]) else value
        key_sources[".".join(parts)] = f"--set {key}={shown}"
    return Layer("--set", data, key_sources)


def environment_layer(environ: Mapping[str, str]) -> tuple[Layer, list[str]]:
    """The LAUNCH_* variables as a layer (nested keys with `__`), and warnings for unknown ones."""
    source = EnvSettingsSource(
        LaunchSettings,
        env_prefix="LAUNCH_",
        env_nested_delimiter="__",
        case_sensitive=False,
    )
    # EnvSettingsSource reads os.environ; give it the mapping we were handed instead.
    source.env_vars = {k.lower(): v for k, v in environ.items()}
    try:
        data = source()
    except SettingsError as exc:
        raise ConfigError(
            f"a LAUNCH_* variable could not be parsed: {exc}",
            source="environment",
            fix="nested values are set one key at a time, e.g. LAUNCH_VLLM__MAX_MODEL_LEN=8192",
        ) from exc
    data = {k: v for k, v in data.items() if k != "env"}  # container variables are set directly
    key_sources: dict[str, str] = {}
    _name_leaves(data, [], key_sources)
    warnings = _unknown_variables(environ)
    return Layer("environment", data, key_sources), warnings


def _name_leaves(node: Mapping[str, Any], path: list[str], out: dict[str, str]) -> None:
    for key, value in node.items():
        here = [*path, key]
        out[".".join(here)] = "LAUNCH_" + "__".join(here).upper()
        if isinstance(value, Mapping):
            _name_leaves(value, here, out)


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    fields = set(LaunchSettings.model_fields) - {"env", "dialects"}
    known = {f"LAUNCH_{f.upper()}" for f in fields} | SELECTOR_VARIABLES | OTHER_VARIABLES
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("LAUNCH_") or upper in known:
            continue
        head = upper.split("__", 1)[0]
        if "__" in upper and head in known:
            continue
        hint = difflib.get_close_matches(head, sorted(known), n=1)
        warnings.append(
            f"environment variable {name} is not a launcher setting and is ignored"
            + (f" (did you mean {hint[0]}?)" if hint else "")
        )
    return warnings
