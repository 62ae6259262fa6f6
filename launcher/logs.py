"""Structured logs: one JSON object per line when not on a TTY, a readable console otherwise.

Every event passes through a redaction step, so a secret (an --api-key value, a token variable)
never reaches the output in clear, whichever code logged it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

MASK = "***"
# Names of variables and fields whose values are secret: OPENAI_API_KEY, HF_TOKEN, MY_KEY, api_key...
# Names of variables and fields whose values are secret: OPENAI_API_KEY, HF_TOKEN, MY_KEY, api_key...
# Anchored at the end so MAX_NUM_BATCHED_TOKENS or max_tokens are not taken for secrets.
SECRET_ENV = re.compile(r"(API_?KEY$|(^|_)KEY$|TOKEN$|SECRET|PASSW(OR)?D|CREDENTIAL)", re.IGNORECASE)
# Log fields that describe a secret without being one (an error names the key it is about).
_PLAIN_FIELDS = frozenset({"event", "key", "fix", "what", "message", "level", "timestamp"})
# Secrets inside free text: `--api-key=abc`, `--hf-token abc`, `HF_TOKEN=abc`, `"api_key": "abc"`.
_SECRET_TEXT = re.compile(
    r"(?P<k>(?i:--(?:[\w-]*-)?(?:api-key|token|secret|password)[= ])"
    r"|\b[A-Z0-9_]*(?:API_KEY|_KEY|TOKEN|SECRET|PASSWORD)="
    r"|(?i:[\"']?(?:api_key|token|secret|password)[\"']?\s*:\s*[\"']?))(?P<v>[^\s\"',}]+)"
)

_secrets: set[str] = set()
_output: tuple[str, TextIO, int] | None = None  # (format, stream, level) of the last configure()


def add_secrets(values: Iterable[str]) -> None:
    """Register values (API keys, tokens) that must be masked wherever they appear."""
    _secrets.update(v for v in values if v and len(v) >= 3)


def may_hold_secret(text: str) -> bool:
    """Whether `text` may hold what redact() masks: a registered secret, or a word its patterns need
    (key, token, secret, password). casefold() keeps the test at least as wide as the patterns."""
    folded = text.casefold()
    if "key" in folded or "token" in folded or "secret" in folded or "passw" in folded:
        return True
    return any(secret in text for secret in _secrets)


def redact(text: str) -> str:
    if not may_hold_secret(text):
        return text  # the common case: no regular expression runs
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return _SECRET_TEXT.sub(lambda m: m.group("k") + MASK, text)


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if isinstance(value, str):
            event[key] = MASK if SECRET_ENV.search(key) and key not in _PLAIN_FIELDS else redact(value)
        elif isinstance(value, list):
            event[key] = [redact(v) if isinstance(v, str) else v for v in value]
    return event


def configure(fmt: str | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog. `fmt` None picks JSON unless the stream is a terminal."""
    global _output
    out = stream if stream is not None else sys.stdout
    _secrets.clear()  # each invocation registers the secrets of its own plan
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    number = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _output = (fmt, out, number)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def output() -> tuple[str, TextIO, int] | None:
    """How configure() set logging up: format, stream and level number (None before it ran)."""
    return _output


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound)
