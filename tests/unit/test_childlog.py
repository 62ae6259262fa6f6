"""Line splitting, cleaning and the two log sinks of launcher.childlog."""

from __future__ import annotations

import asyncio
import io
import json
import os

import pytest
import structlog
import uvloop

from launcher import logs
from launcher.childlog import (
    CUT_MARK,
    PHASES,
    ChildOutput,
    JsonSink,
    LineSplitter,
    StructlogSink,
    clean_lines,
    make_sink,
    vllm_level,
)


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()


def test_lines_split_across_chunks():
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o\nthr") == ["two"]
    assert splitter.feed(b"ee\n\nfour") == ["three", ""]
    assert splitter.close() == ["four"]
    assert splitter.close() == []


def test_a_long_line_is_cut_and_its_rest_dropped_until_the_newline():
    splitter = LineSplitter(limit=10)
    assert splitter.feed(b"0123456789ABCDEF\nnext\n") == ["0123456789" + CUT_MARK, "next"]
    # The same line arriving in pieces: cut once, the remainder skipped across chunks.
    assert splitter.feed(b"0123456") == []
    assert splitter.feed(b"789ABCD") == ["0123456789" + CUT_MARK]
    assert splitter.feed(b"EFGH") == []
    assert splitter.feed(b"IJ\nafter\n") == ["after"]


def test_pending_bytes_stay_bounded():
    splitter = LineSplitter(limit=100)
    for _ in range(1000):
        splitter.feed(b"z" * 64)
        assert len(splitter._pending) <= 100


def test_bad_utf8_is_replaced_and_split_characters_survive_chunking():
    splitter = LineSplitter()
    assert splitter.feed(b"\xff ok\n") == ["\ufffd ok"]
    snowman = "☃".encode()
    assert splitter.feed(snowman[:1]) == []
    assert splitter.feed(snowman[1:] + b"\n") == ["☃"]


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("INFO 05-09 10:00:00 [x.py:1] hello", "info"),
        ("WARNING 05-09 10:00:00 [x.py:1] hmm", "warning"),
        ("(EngineCore_DP0 pid=7) ERROR 05-09 10:00:00 [core.py:1] boom", "error"),
        ("(APIServer pid=1) DEBUG 05-09 x", "debug"),
        ("INFO:     Uvicorn running on http://0.0.0.0:8000", "info"),
        ("WARN something", "warning"),
        ("CRITICAL x", "critical"),
        ("Traceback (most recent call last):", "info"),
        ("INFORMATION is not a level", "info"),
    ],
)
def test_vllm_level(line, level):
    assert vllm_level(line) == level


def clean(line):
    [cleaned] = clean_lines([line])
    return cleaned


def test_clean_masks_secrets_and_keeps_the_last_progress_state():
    assert clean("args: --api-key sk-123 --port 1") == "args: --api-key *** --port 1"
    assert "sk-9" not in clean("non-default args: {'api_key': 'sk-9'}")
    logs.add_secrets(["hunter2-secret-value"])
    assert clean("the value hunter2-secret-value leaked") == "the value *** leaked"
    assert clean("a: 1%\ra: 50%\ra: 100%") == "a: 100%"
    assert clean("plain line") == "plain line"


def test_json_sink_writes_what_structlog_would():
    buffer = io.StringIO()
    logs.configure("json", "info", buffer)
    sink = make_sink()
    assert isinstance(sink, JsonSink)
    items = [("info", 'a "quoted" line ☃ \\ with \t tab'), ("warning", "second")]
    sink.emit("stderr", 42, items)
    StructlogSink().emit("stderr", 42, items)
    fast, slow = buffer.getvalue().splitlines()[:2], buffer.getvalue().splitlines()[2:]
    strip = [{k: v for k, v in json.loads(line).items() if k != "timestamp"} for line in fast + slow]
    assert strip[:2] == strip[2:]
    assert strip[0] == {
        "source": "vllm",
        "stream": "stderr",
        "pid": 42,
        "event": items[0][1],
        "level": "info",
    }
    # Same key order and spacing too: the bytes differ only in the timestamp.
    for one, other in zip(fast, slow, strict=True):
        assert one.rsplit('"timestamp"', 1)[0] == other.rsplit('"timestamp"', 1)[0]
        assert json.loads(one)["timestamp"].endswith("Z")


def test_json_sink_honours_the_log_level():
    buffer = io.StringIO()
    logs.configure("json", "warning", buffer)
    make_sink().emit("stdout", 1, [("info", "dropped"), ("warning", "kept"), ("error", "kept too")])
    assert [json.loads(line)["event"] for line in buffer.getvalue().splitlines()] == ["kept", "kept too"]


def test_console_logs_go_through_structlog():
    buffer = io.StringIO()
    logs.configure("console", "info", buffer)
    sink = make_sink()
    assert isinstance(sink, StructlogSink)
    sink.emit("stdout", 9, [("info", "hello from vllm")])
    assert "hello from vllm" in buffer.getvalue()
    assert "source=vllm" in buffer.getvalue().replace("\x1b", "")


def test_child_output_reads_pipes_to_the_end_and_reports_phases_after_their_line():
    buffer = io.StringIO()
    logs.configure("json", "info", buffer)
    seen: list[tuple[str, int]] = []

    async def scenario() -> ChildOutput:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        output = ChildOutput(123, on_phase=lambda name: seen.append((name, len(buffer.getvalue().splitlines()))))
        await output.attach(os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"))
        os.write(out_w, b"INFO x Loading weights took 1.2 seconds\nINFO x # NPU blocks: 10\n")
        os.write(err_w, b"INFO:     Uvicorn running on http://0.0.0.0:8000\n")
        os.write(err_w, b"tail without newline")
        os.close(out_w)
        os.close(err_w)
        assert await output.drain(5.0)
        return output

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        output = runner.run(scenario())
    assert [name for name, _ in seen] == ["weights_loaded", "kv_cache_sized", "listening"]
    assert seen[0][1] >= 1  # the vLLM line was written before its phase was announced
    assert output.recent()[-1] == "tail without newline"
    assert output.lines == 4
    events = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert {e["stream"] for e in events} == {"stdout", "stderr"}


class _ListSink:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []

    def emit(self, stream: str, pid: int, items: list[tuple[str, str]]) -> None:
        self.items += [(stream, level, line) for level, line in items]


@pytest.mark.parametrize(("phase", "needle"), [(name, needle) for name, needles in PHASES for needle in needles])
def test_every_phase_wording_is_recognised(phase, needle):
    seen: list[str] = []
    output = ChildOutput(1, on_phase=seen.append, sink=_ListSink())
    output.handle("stdout", ["INFO 05-09 10:00:00 [x.py:1] unrelated", f"INFO 05-09 [x.py:9] {needle} 1.5 s"])
    assert seen == [phase]
    output.handle("stdout", [f"again: {needle}"])
    assert seen == [phase]  # each phase once per start


def test_phases_are_not_watched_after_start_up():
    seen: list[str] = []
    output = ChildOutput(1, on_phase=seen.append, sink=_ListSink())
    output.stop_watching_phases()
    output.handle("stdout", ["Loading weights took 1 s"])
    assert seen == []


def test_clean_lines_checks_the_chunk_then_only_the_lines_that_need_it():
    lines = ["plain", "--api-key sk-77 here", "p: 1%\rp: 99%", "token=abc", "also plain"]
    assert clean_lines(lines) == [clean(line) for line in lines]
    assert clean_lines(lines)[1] == "--api-key *** here"
    assert clean_lines(["a", "b"]) == ["a", "b"]


def test_a_long_line_among_short_ones_is_cut_by_bytes():
    splitter = LineSplitter(limit=40)
    wide = "é" * 30  # 30 characters, 60 bytes
    lines = splitter.feed(("short\n" + wide + "\nshort again\n").encode())
    assert lines[0] == "short" and lines[2] == "short again"
    assert lines[1] == "é" * 20 + CUT_MARK
