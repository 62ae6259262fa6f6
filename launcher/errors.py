"""Errors that end the launcher with a documented exit code and a message a user can act on."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_CONFIG = 2  # invalid configuration: nothing started, nothing deleted
EXIT_ENVIRONMENT = 3  # environment / preflight failure: model dir, devices, CANN, port


class LaunchError(Exception):
    """A failure the user can fix. `str()` is the full message: what, where it came from, how to fix."""

    exit_code = EXIT_CONFIG
    kind = "invalid_configuration"

    def __init__(
        self,
        what: str,
        *,
        key: str | None = None,
        value: Any = None,
        source: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.key = key
        self.value = value
        self.source = source
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        head = ""
        if self.key is not None:
            head = f"{self.key} = {self.value!r}" if self.value is not None else self.key
            if self.source:
                head += f" (from {self.source})"
            head += ": "
        text = head + self.what
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.what}
        for name in ("key", "value", "source", "fix"):
            val = getattr(self, name)
            if val is not None:
                out[name] = val if isinstance(val, (str, int, float, bool)) else repr(val)
        return out


class ConfigError(LaunchError):
    exit_code = EXIT_CONFIG
    kind = "invalid_configuration"


class PreflightError(LaunchError):
    exit_code = EXIT_ENVIRONMENT
    kind = "preflight_failed"
