"""vLLM's stdout and stderr, re-emitted as the launcher's own structured log events.

The pipes are read continuously by the event loop, so vLLM never blocks on a full pipe while the
launcher does something else; memory stays bounded (lines are cut at LINE_LIMIT bytes, only the last
RING_LINES lines are kept for diagnosis). Each line becomes one event with `source: "vllm"`, `stream`,
`pid`, the line as `event` and the level vLLM printed (`INFO 05-09 ...`, `(EngineCore pid=7) WARNING`).

While vLLM starts, lines are also matched against its well-known progress messages so the supervisor
can log start-up phases with elapsed seconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import deque
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import IO, Any, Protocol, TextIO

import structlog

from launcher import logs

LINE_LIMIT = 16 * 1024  # bytes; longer lines are cut, the rest up to the newline is dropped
CUT_MARK = " [...line cut at 16 KiB]"
RING_LINES = 200

_LEVEL = re.compile(r"(?:\([^)]*\)\s+)?(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b")
_LEVEL_NAMES = {"WARN": "warning"}
_LEVEL_NUMBERS = {name.lower(): number for name, number in logging.getLevelNamesMapping().items()}

# vLLM's own progress lines, matched loosely (wording changes between versions and vLLM forks) and
# by plain substrings: every line is tested while vLLM starts, a regex would cost 5x more.
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("weights_loaded", ("Loading weights took", "Model loading took", "model weights took")),
    ("kv_cache_sized", ("# GPU blocks", "# NPU blocks", "# CPU blocks", "# npu blocks", "KV cache")),
    ("listening", ("Uvicorn running on", "Application startup complete")),
)
_PHASE_HINTS = ("took", "blocks", "KV cache", "Uvicorn", "startup")  # each needle holds one of these

_INFO_PREFIXES = ("INFO ", "INFO:")
_LEVEL_STARTS = "DIWEC("  # first characters of the prefixes _LEVEL can match


def vllm_level(line: str) -> str:
    """The level vLLM (or uvicorn) printed at the start of the line; `info` when there is none."""
    if line.startswith(_INFO_PREFIXES) or line[:1] not in _LEVEL_STARTS:
        return "info"  # most lines; the regex below costs a microsecond
    match = _LEVEL.match(line)
    if match is None:
        return "info"
    name = match.group(1)
    return _LEVEL_NAMES.get(name, name.lower())


def _terminal_view(line: str) -> str:
    """What a terminal shows of a carriage-return progress bar: its last state."""
    parts = [part for part in line.split("\r") if part]
    return parts[-1] if parts else ""


def clean_lines(lines: list[str]) -> list[str]:
    """Mask secrets and keep what a terminal would show of a progress bar, for lines read together:
    each test runs once on the whole chunk (a few C-speed scans of ~64 KiB) and per line only when the
    chunk hits (redact() tests its line first); a secret or a keyword cannot span a newline."""
    blob = "\n".join(lines)
    if "\r" in blob:
        lines = [_terminal_view(line) if "\r" in line else line for line in lines]
    if logs.may_hold_secret(blob):
        lines = [logs.redact(line) for line in lines]
    return lines


class LineSplitter:
    """Bytes in, complete lines out. Bounded: never holds more than LINE_LIMIT bytes of a line."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self._limit = limit
        self._pending = b""
        self._skipping = False  # inside an over-long line whose head was already emitted

    def _decode(self, raw: bytes) -> str:
        return raw.decode("utf-8", "replace")

    def _cut(self, raw: bytes) -> str:
        if len(raw) > self._limit:
            return self._decode(raw[: self._limit]) + CUT_MARK
        return self._decode(raw)

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return lines
            self._skipping = False
            data = data[newline + 1 :]
        buffer = self._pending + data if self._pending else data
        last = buffer.rfind(b"\n")
        if last >= 0:
            # One decode for the whole block: a newline byte is never part of a multi-byte character.
            block = buffer[:last]
            lines = self._decode(block).split("\n")
            # A line over `limit` bytes has over limit/4 characters; only then split again by bytes.
            if last > self._limit and max(map(len, lines)) > self._limit // 4:
                lines = [self._cut(raw) for raw in block.split(b"\n")]
            buffer = buffer[last + 1 :]
        if len(buffer) > self._limit:
            lines.append(self._cut(buffer))
            buffer = b""
            self._skipping = True
        self._pending = buffer
        return lines

    def close(self) -> list[str]:
        """What is left when the pipe ends: a last line without a newline."""
        rest, self._pending, self._skipping = self._pending, b"", False
        return [self._decode(rest)] if rest else []


class Sink(Protocol):
    def emit(self, stream: str, pid: int, items: list[tuple[str, str]]) -> None:
        """Write (level, line) pairs read together from one stream."""


class StructlogSink:
    """Any structlog configuration (the console renderer on a terminal): one logger call per line."""

    def __init__(self) -> None:
        self._log = structlog.get_logger()

    def emit(self, stream: str, pid: int, items: list[tuple[str, str]]) -> None:
        for level, line in items:
            self._log.log(_LEVEL_NUMBERS.get(level, logging.INFO), line, source="vllm", stream=stream, pid=pid)


class JsonSink:
    """The same JSON objects as `logs.configure("json")` writes, formatted here and written per chunk.

    A structlog call costs ~20 µs a line, mostly the redaction regex that `clean_lines()` already applied;
    at vLLM's start-up bursts and under a log flood that would throttle vLLM through a full pipe.
    Used only while the configuration is exactly the one this mirrors (see `make_sink`); a test
    compares both outputs.
    """

    def __init__(self, out: TextIO, stamper: Any, min_level: int) -> None:
        self._out = out
        self._stamper = stamper
        self._min_level = min_level

    def emit(self, stream: str, pid: int, items: list[tuple[str, str]]) -> None:
        # Lines that arrived in one read share a timestamp: they were read at the same instant.
        stamp = encode_basestring(self._stamper(None, "info", {})["timestamp"])
        head = f'{{"source": "vllm", "stream": "{stream}", "pid": {pid}, "event": '
        min_level = self._min_level
        parts = [
            f'{head}{encode_basestring(line)}, "level": "{level}", "timestamp": {stamp}}}\n'
            for level, line in items
            if _LEVEL_NUMBERS.get(level, logging.INFO) >= min_level
        ]
        if parts:
            self._out.write("".join(parts))
            self._out.flush()


def make_sink() -> Sink:
    """The fast JSON sink when logs are JSON lines (as `logs.configure("json")` sets up), else structlog.
    Both write the same objects; the fast one formats a whole chunk of lines at once."""
    configured = logs.output()
    if configured is None or configured[0] != "json":
        return StructlogSink()
    _fmt, out, level = configured
    return JsonSink(out, structlog.processors.TimeStamper(fmt="iso", utc=True), level)


class ChildOutput:
    """Reads one child's stdout and stderr until both end; keeps the last lines for diagnosis."""

    def __init__(
        self,
        pid: int,
        *,
        on_phase: Callable[[str], None] | None = None,
        sink: Sink | None = None,
        ring: int = RING_LINES,
    ) -> None:
        self.pid = pid
        self._sink = sink if sink is not None else make_sink()
        self._on_phase = on_phase
        self._seen_phases: set[str] = set()
        self._recent: deque[str] = deque(maxlen=ring)
        self._transports: list[asyncio.BaseTransport] = []
        self._done: list[asyncio.Future[None]] = []
        self.lines = 0

    def stop_watching_phases(self) -> None:
        """After start-up the phase regexes would only cost time (and could match a later line)."""
        self._on_phase = None

    async def attach(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        loop = asyncio.get_running_loop()
        for name, pipe in (("stdout", stdout), ("stderr", stderr)):
            done: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.connect_read_pipe(functools.partial(_PipeReader, self, name, done), pipe)
            self._transports.append(transport)
            self._done.append(done)

    def recent(self, count: int | None = None) -> list[str]:
        lines = list(self._recent)
        return lines if count is None else lines[-count:]

    def handle(self, stream: str, lines: list[str]) -> None:
        """Lines read together from one stream. Per-line Python work is kept to the level prefix; the
        other tests run on the whole chunk first (a million-line flood must not slow vLLM down)."""
        lines = clean_lines(lines)
        self._recent.extend(lines)
        phases: list[str] = []
        if self._on_phase is not None:
            blob = "\n".join(lines)
            if any(hint in blob for hint in _PHASE_HINTS):
                for line in lines:
                    phases += self._new_phases(line)
        items = [
            ("info", line)
            if line.startswith(_INFO_PREFIXES) or line[:1] not in _LEVEL_STARTS
            else (vllm_level(line), line)
            for line in lines
        ]
        self.lines += len(items)
        self._sink.emit(stream, self.pid, items)
        # After the lines: a phase event then follows the vLLM line that announced it.
        if phases and self._on_phase is not None:
            for name in phases:
                self._on_phase(name)

    def _new_phases(self, line: str) -> list[str]:
        found = [
            name
            for name, needles in PHASES
            if name not in self._seen_phases and any(needle in line for needle in needles)
        ]
        self._seen_phases.update(found)
        return found

    async def drain(self, timeout: float) -> bool:
        """Wait until both pipes end (every writer is gone), at most `timeout`; then close them.

        Returns False when a pipe was still open: a process we could not kill still holds it.
        """
        finished = True
        if self._done:
            _, pending = await asyncio.wait(self._done, timeout=timeout)
            finished = not pending
        for transport in self._transports:
            transport.close()
        return finished


class _PipeReader(asyncio.Protocol):
    def __init__(self, owner: ChildOutput, stream: str, done: asyncio.Future[None]) -> None:
        self._owner = owner
        self._stream = stream
        self._done = done
        self._splitter = LineSplitter()

    def data_received(self, data: bytes) -> None:
        lines = self._splitter.feed(data)
        if lines:
            self._owner.handle(self._stream, lines)

    def connection_lost(self, exc: Exception | None) -> None:
        rest = self._splitter.close()
        if rest:
            self._owner.handle(self._stream, rest)
        if not self._done.done():
            self._done.set_result(None)
