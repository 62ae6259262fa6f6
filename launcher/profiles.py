"""Profiles: named YAML documents of settings, built in (profiles/) or given by path.

A profile may `extends: [other, ...]`; those are applied first, each once, in order. Reading a
profile reads only that file; nothing here looks at the host.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from launcher.dialects import DIALECTS
from launcher.errors import ConfigError
from launcher.layers import Layer
from launcher.settings import PROFILE_ONLY_KEYS, LaunchSettings

_PACKAGED = Path(__file__).parent / "_builtin_profiles"  # where the wheel puts profiles/
_SOURCE_TREE = Path(__file__).parent.parent / "profiles"  # a checkout or editable install


def builtin_dir() -> Path:
    return _PACKAGED if _PACKAGED.is_dir() else _SOURCE_TREE


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    document: dict[str, Any]

    @property
    def description(self) -> str:
        return str(self.document.get("description", "")).strip()

    @property
    def extends(self) -> list[str]:
        value = self.document.get("extends") or []
        return [value] if isinstance(value, str) else list(value)

    @property
    def source(self) -> str:
        return f"profile {self.name} ({self.path})"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def load(ref: str, *, origin: str = "--profile") -> Profile:
    """A built-in profile by name, or a profile file by path."""
    if looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ConfigError(
                "the profile file does not exist",
                key=origin,
                value=ref,
                fix="give the path of a readable YAML file, or the name of a built-in profile "
                f"({', '.join(builtin_names())})",
            )
        return Profile(path.stem, path, read_document(path))
    path = builtin_dir() / f"{ref}.yaml"
    if not path.is_file():
        names = builtin_names()
        close = difflib.get_close_matches(ref, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            "no such profile",
            key=origin,
            value=ref,
            fix=f"{hint}known profiles: {', '.join(names)}; `launch profiles` describes them",
        )
    return Profile(ref, path, _read_builtin(path))


@cache
def _read_builtin(path: Path) -> dict[str, Any]:
    return read_document(path)


def read_document(path: Path) -> dict[str, Any]:
    """Parse a profile file; malformed YAML and wrong shapes are configuration errors with a place."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", key="profile", value=str(path)) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}:{mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{where}malformed YAML: {problem}",
            key="profile",
            value=str(path),
            fix="fix the YAML at that line and column (indentation, quotes, ':' after keys)",
        ) from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"a profile must be a mapping of settings, not a {type(document).__name__}",
            key="profile",
            value=str(path),
            fix="start the file with keys such as `vllm:`, `env:`, `graph:` or `extends:`",
        )
    known = set(LaunchSettings.model_fields) | PROFILE_ONLY_KEYS
    for key in document:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConfigError(
                "unknown top-level key in profile",
                key=str(key),
                source=str(path),
                fix=(f"did you mean {close[0]!r}? " if close else "")
                + f"top-level keys are: {', '.join(sorted(known))}; vLLM flags go under `vllm:`",
            )
    extends = document.get("extends")
    if extends is not None and not (
        isinstance(extends, str) or (isinstance(extends, list) and all(isinstance(e, str) for e in extends))
    ):
        raise ConfigError(
            "`extends` must be a profile name or a list of names",
            key="extends",
            value=extends,
            source=str(path),
            fix="write extends: [base]",
        )
    dialects = document.get("dialects")
    if dialects is not None and not (
        isinstance(dialects, list) and all(isinstance(d, str) and d in DIALECTS for d in dialects)
    ):
        raise ConfigError(
            "`dialects` must be a list of dialect names",
            key="dialects",
            value=dialects,
            source=str(path),
            fix=f"list some of: {', '.join(DIALECTS)}",
        )
    for section in ("vllm", "env", "graph", "speculative", "supervisor"):
        if section in document and document[section] is not None and not isinstance(document[section], dict):
            raise ConfigError(
                f"`{section}:` must be a mapping",
                key=section,
                value=document[section],
                source=str(path),
                fix=f"indent the {section} settings under `{section}:` as `key: value` lines",
            )
    return document


def expand(refs: list[str], *, origin: str = "--profile") -> list[Profile]:
    """The profiles to apply, in order: each one's `extends` first, every profile once."""
    ordered: list[Profile] = []
    seen: set[Path] = set()

    def visit(ref: str, stack: tuple[str, ...], base_dir: Path | None) -> None:
        target = ref
        if base_dir is not None and looks_like_path(ref) and not Path(ref).is_absolute():
            target = str(base_dir / ref)
        elif base_dir is not None and not (builtin_dir() / f"{ref}.yaml").is_file():
            # A user profile may extend a file beside it by name.
            sibling = base_dir / f"{ref}.yaml"
            target = str(sibling) if sibling.is_file() else ref
        profile = load(target, origin=origin if not stack else f"extends in profile {stack[-1]}")
        key = profile.path.resolve()
        if profile.name in stack:
            raise ConfigError(
                "profiles extend each other in a cycle",
                key="extends",
                value=" -> ".join([*stack, profile.name]),
                source=profile.source,
                fix="remove one of the `extends` entries so the chain ends",
            )
        if key in seen:
            return
        for parent in profile.extends:
            visit(
                parent,
                (*stack, profile.name),
                None if profile.path.parent == builtin_dir() else profile.path.parent,
            )
        seen.add(key)
        ordered.append(profile)

    for ref in refs:
        visit(ref, (), None)
    return ordered


def layers_for(profiles: list[Profile]) -> list[Layer]:
    return [Layer(p.source, p.document) for p in profiles]
