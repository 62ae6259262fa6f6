"""Why vLLM ended, in words an operator can act on; and the Kubernetes termination message.

The diagnosis reads vLLM's last lines and its exit status once it has ended (not every line while it
runs: the launcher must stay cheap under a log flood). Root causes are tried before their consequences:
an NPU out-of-memory error usually ends in "EngineDeadError" a few lines later.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from launcher.reaper import exit_code, signal_name

TERMINATION_LOG_LIMIT = 4096  # bytes Kubernetes keeps of a termination message

# What made the supervisor stop vLLM itself, and what vLLM's exit means in each case.
TRIGGER_HINTS = {
    "unhealthy": "vLLM stopped answering /health in time (a 503 means its engine is dead); "
    "see the lines before this event",
    "start_timeout": "vLLM did not become healthy within supervisor.start_timeout; large models and graph "
    "compilation can take many minutes: raise supervisor.start_timeout if the log shows progress",
    "warmup_failed": "vLLM answered /health but the warm-up request failed: the first real request would "
    "fail the same way; see the lines before this event",
}


@dataclass(frozen=True)
class Diagnosis:
    reason: str
    hint: str | None = None


def _has(*patterns: str, flags: int = 0) -> Callable[[str], bool]:
    regex = re.compile("|".join(patterns), flags)
    return lambda line: regex.search(line) is not None


_GRAPH_CACHES = ("torchair", "torch_compile_cache", "compile cache", "inductor", "compiled graph")


def _stale_graph_cache(line: str) -> bool:
    """torchair's .torchair_cache (0.6, vllm-ascend ≤ 0.11) or torch.compile's cache (recent vLLM)."""
    lowered = line.lower()
    if "cache" not in lowered or not any(name in lowered for name in _GRAPH_CACHES):
        return False  # vLLM logs the cache path at INFO on healthy starts too: require an error word
    words = ("error", "fail", "mismatch", "invalid", "corrupt", "not match", "unpickl")
    return any(word in lowered for word in words)


# (reason, line test, hint), most specific root cause first.
LINE_RULES: tuple[tuple[str, Callable[[str], bool], str], ...] = (
    (
        "bad_argument",
        _has(
            r"error: unrecognized arguments",
            r"error: argument ",
            r"error: the following arguments are required",
        ),
        "vLLM rejected its command line: a flag the installed vLLM does not have, or a bad value. "
        "`launch render` shows the command, `launch check --dialect ...` validates it",
    ),
    (
        "port_in_use",
        _has(r"Address already in use", r"\[Errno 98\]"),
        "another process already listens on vLLM's port: stop it or choose another port (vllm.port)",
    ),
    (
        "missing_cann_library",
        _has(r"lib\w+\.so[\d.]*: cannot open shared object file", r"Failed to infer device type"),
        "the CANN runtime environment is not loaded: the image must provide LD_LIBRARY_PATH etc. "
        "(source /usr/local/Ascend/ascend-toolkit/set_env.sh, and nnal/atb/set_env.sh for vllm-ascend)",
    ),
    (
        "npu_out_of_memory",
        _has(
            r"NPU out of memory",
            r"CUDA out of memory",
            r"OutOfMemoryError",
            r"EL0004",
            r"ACL_ERROR_RT_MEMORY_ALLOCATION",
            r"No available memory for the cache blocks",
        ),
        "the NPU ran out of memory: lower vllm.gpu_memory_utilization, max_model_len or max_num_seqs, raise "
        "tensor_parallel_size, and check with `npu-smi info` that no old vLLM process still holds NPU memory",
    ),
    (
        "host_out_of_memory",
        _has(r"\bMemoryError\b", r"Cannot allocate memory", r"std::bad_alloc"),
        "the host (container) ran out of memory: raise the container's memory limit or lower swap_space",
    ),
    (
        "hccl_timeout",
        _has(r"HCCL.*(?:time ?out|timed out)", r"\bEI000[26]\b", flags=re.I),
        "the NPUs could not reach each other in time: every rank must start within HCCL_CONNECT_TIMEOUT; "
        "check the network between nodes (HCCL_IF_IP, HCCL_SOCKET_IFNAME) or raise HCCL_CONNECT_TIMEOUT",
    ),
    (
        "stale_graph_cache",
        _stale_graph_cache,
        "the compiled graph cache was made for another model or other parameters: run `launch cache clear` "
        "(or delete .torchair_cache / TORCHAIR_CACHE_HOME) and start again",
    ),
    (
        "engine_died",
        _has(
            r"EngineDeadError",
            r"Engine core.*died",
            r"EngineCore.*died",
            r"[Ee]ngine core initialization failed",
            r"Engine process failed to start",
        ),
        "vLLM's engine process ended; the lines before this event say why",
    ),
)


def diagnose(
    returncode: int,
    lines: Sequence[str],
    *,
    requested: bool,
    was_ready: bool,
    trigger: str | None = None,
) -> Diagnosis:
    """Name the reason vLLM ended. `trigger` is why the supervisor stopped it, if it did."""
    if requested:
        return Diagnosis("stopped")
    for reason, test, hint in LINE_RULES:
        if any(test(line) for line in lines):
            return Diagnosis(reason, hint)
    if returncode == 2 and not was_ready and trigger is None:
        # argparse's status: vLLM refused its arguments even if the message was not recognised.
        return Diagnosis("bad_argument", LINE_RULES[0][2])
    if trigger is not None:
        return Diagnosis(trigger, TRIGGER_HINTS.get(trigger))
    if returncode == -signal.SIGKILL:
        return Diagnosis(
            "oom_killed",
            "killed by SIGKILL that the launcher did not send, usually the kernel's OOM killer: raise the "
            "container's memory limit (see `dmesg` or the pod's OOMKilled status)",
        )
    if returncode < 0:
        return Diagnosis("killed_by_signal", f"vLLM was ended by {signal_name(-returncode)}")
    if returncode == 0:
        return Diagnosis(
            "exited_unexpectedly",
            "vLLM exited with status 0 although nobody asked it to stop; an engine failure can end the server this way",
        )
    return Diagnosis("exited_with_error", None)


def termination_message(returncode: int, diagnosis: Diagnosis, lines: Sequence[str], note: str = "") -> str:
    """At most TERMINATION_LOG_LIMIT bytes: the reason, the hint, then as many last lines as fit."""
    how = f"was killed by {signal_name(-returncode)}" if returncode < 0 else f"exited with status {returncode}"
    head = f"vLLM {how} (exit code {exit_code(returncode)}): {diagnosis.reason}\n"
    if diagnosis.hint:
        head += f"hint: {diagnosis.hint}\n"
    if note:
        head += note + "\n"
    head = _fit(head, TERMINATION_LOG_LIMIT)
    budget = TERMINATION_LOG_LIMIT - len(head.encode()) - len("last lines:\n")
    tail: list[str] = []
    for line in reversed(lines):
        line = _fit(line, 512) + "\n"
        size = len(line.encode())
        if size > budget:
            break
        tail.append(line)
        budget -= size
    if not tail:
        return head
    return head + "last lines:\n" + "".join(reversed(tail))


def _fit(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def write_termination_log(path: str, message: str) -> bool:
    """Write the message where Kubernetes reads it. Only an existing writable file, or a new file in a
    writable directory other than /dev: outside Kubernetes, /dev/termination-log does not exist and the
    launcher must not litter a container's /dev."""
    if not path:
        return False
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return False
    else:
        parent = os.path.dirname(os.path.abspath(path))
        if parent == "/dev" or not os.access(parent, os.W_OK):
            return False
    with contextlib.suppress(OSError):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(message)
        return True
    return False
