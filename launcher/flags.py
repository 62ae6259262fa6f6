"""vLLM's command-line flags per dialect: which exist, what type they take, how they are written.

The catalogues in `data/` are generated from each vLLM's own argument parser
(`tools/dump_vllm_flags.py`), so "does this flag exist here" is a lookup, not a guess.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError

_DATA = Path(__file__).parent / "data"
TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})

Catalogue = dict[str, dict[str, Any]]


@cache
def catalogue(name: str) -> Catalogue:
    """Flags of one vLLM server: `0.32` (recent vLLM), `0.6` (OpenAI server of 0.6.3),
    `0.6_api_server` (the legacy /generate server of 0.6.3)."""
    path = _DATA / f"vllm_flags_{name}.json"
    data: Catalogue = json.loads(path.read_text(encoding="utf-8"))
    return data


@cache
def all_names() -> frozenset[str]:
    names: set[str] = set()
    for path in _DATA.glob("vllm_flags_*.json"):
        names.update(catalogue(path.stem.removeprefix("vllm_flags_")))
    return frozenset(names)


def suggest(name: str, names: frozenset[str] | None = None) -> str | None:
    pool = sorted(names if names is not None else all_names())
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.75)
    return close[0] if close else None


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def coerce(name: str, value: Any, spec: dict[str, Any] | None, source: str | None) -> Any:
    """Type a flag's value by its catalogue entry; text from env and --set becomes int, bool, list..."""
    if spec is None:
        return value
    kind = spec.get("kind", "str")
    key = f"vllm.{name}"

    def bad(expected: str, example: str) -> ConfigError:
        return ConfigError(
            f"expected {expected}",
            key=key,
            value=value,
            source=source,
            fix=f"set it to {example}, e.g. {key}: {example.split(' ')[-1]}",
        )

    if kind in ("flag", "bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad("true or false", "true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise bad("a whole number", "a whole number such as 4096")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            if text.lstrip("-").isdigit():
                return int(text)
            if text == "auto" and name == "max_model_len":
                return text
        raise bad("a whole number", "a whole number such as 4096")
    if kind == "float":
        if isinstance(value, bool):
            raise bad("a number", "a number such as 0.9")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number", "a number such as 0.9") from None
    if kind == "list":
        if isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, str):
            items = value.split()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        else:
            raise bad("a list", "a list such as [a, b]")
        if any(isinstance(i, (dict, list)) for i in items):
            raise bad("a list of plain values", "a list such as [a, b]")
        return [str(i) for i in items]
    if kind == "json":
        if isinstance(value, (dict, list)):
            return value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                raise bad("a JSON object", 'a JSON object such as {"key": 1}') from None
            if isinstance(parsed, dict):
                return parsed
        raise bad("a mapping", 'a mapping such as {"key": 1}')
    # str
    if isinstance(value, (dict, list)):
        raise bad("a single value", "a single value such as auto")
    text = "true" if value is True else "false" if value is False else str(value)
    choices = spec.get("choices")
    if choices and text not in choices:
        raise ConfigError(
            f"not one of vLLM's choices: {', '.join(choices)}",
            key=key,
            value=value,
            source=source,
            fix=f"use one of {', '.join(choices)}",
        )
    return text


def render(name: str, value: Any, spec: dict[str, Any] | None) -> list[str]:
    """One flag as argv items, the way vLLM's own parser reads it back."""
    opt = option(name)
    kind = (spec or {}).get("kind")
    if value is True:
        return [opt]
    if value is False:
        return [f"--no-{name.replace('_', '-')}"] if kind == "bool" else []
    if isinstance(value, (list, tuple)):
        return [opt, *[str(v) for v in value]] if value else []
    if isinstance(value, dict):
        return [f"{opt}={json.dumps(value, separators=(',', ':'), sort_keys=True)}"]
    return [f"{opt}={value}"]
