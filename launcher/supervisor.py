"""`launch run`: start vLLM, wait until it serves, watch it, stop it cleanly, restart it by policy.

Shaped like gunicorn's arbiter: signal handlers only enqueue; one coroutine acts on signals
(`_dispatch_signals`) and one owns vLLM's life cycle (`_supervise`), so the order of events is the
order in which they are handled. Boot failures end in "giving up" instead of looping: arguments
vLLM rejects are never retried, other failures only `max_restarts` times per `restart_window`.

The launcher may be PID 1: it forwards signals (the kernel ignores unhandled ones for PID 1), adopts
and reaps orphans (`reaper.py`), and leaves no process behind when vLLM ends, whoever ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

import psutil
import uvloop

from launcher import npu
from launcher.cachekeeper import CacheKeeper
from launcher.childlog import ChildOutput
from launcher.errors import EXIT_ENVIRONMENT, PreflightError
from launcher.failures import Diagnosis, diagnose, termination_message, write_termination_log
from launcher.health import Prober
from launcher.logs import get_logger
from launcher.plan import Plan
from launcher.reaper import Reaper, become_subreaper, exit_code, signal_name
from launcher.restart import RestartPolicy
from launcher.status import Status, StatusServer

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
# These end the launcher after vLLM; SIGHUP, SIGUSR1 and SIGUSR2 are only passed on (if vLLM dies of
# one, that is an exit nobody asked for, and the restart policy applies).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
ESCALATING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})  # a second one means "kill it now"
NOT_RETRIED = frozenset({"bad_argument", "spawn_failed"})
KILL_TIMEOUT = 5.0  # SIGKILL takes effect at once unless a process is stuck in the kernel (a driver)
DRAIN_TIMEOUT = 2.0  # the last lines (the traceback) must be read before the exit is diagnosed


@dataclass(frozen=True)
class Outcome:
    """How one run of vLLM ended."""

    returncode: int  # Popen's convention: negative for death by signal
    diagnosis: Diagnosis
    requested: bool  # the launcher was asked to stop
    was_ready: bool
    trigger: str | None = None  # why the supervisor stopped vLLM itself (unhealthy, start_timeout, ...)
    ran_for: float = 0.0
    lines: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        code = exit_code(self.returncode)
        if code == 0 and not self.requested:
            # vLLM's server ends with 0 when its engine dies; an orchestrator must see a failure.
            return 1
        return code

    @property
    def retryable(self) -> bool:
        return self.diagnosis.reason not in NOT_RETRIED


def spawn(plan: Plan) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        plan.argv,
        env=plan.child_environ(os.environ),
        cwd=plan.cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Its own process group: a terminal's Ctrl-C reaches only the launcher, which forwards it
        # once, and killpg() reaches vLLM's workers even after the API server has died.
        process_group=0,
        close_fds=True,
    )


class Supervisor:
    def __init__(self, plan: Plan, spare: Sequence[psutil.Process] = ()) -> None:
        self.plan = plan
        self.settings = plan.supervisor
        self.status = Status()
        self.reaper = Reaper(spare)
        self.prober = Prober(plan)
        self.policy = RestartPolicy(plan.supervisor)
        self.log = get_logger()
        self.cache = CacheKeeper(plan, self.log)
        self.status.cache = self.cache.status
        self._child: subprocess.Popen[bytes] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._pgid: int | None = None
        self._became_ready = False
        self._stop_signal: int | None = None
        self._sigchld_pipe: tuple[int, int] | None = None
        # Created in run(), inside the event loop they belong to.
        self._signals: asyncio.Queue[int]
        self._stop_requested: asyncio.Event
        self._kill_now: asyncio.Event

    async def run(self) -> int:
        """Supervise until vLLM is gone for good; the exit code the launcher must end with."""
        loop = asyncio.get_running_loop()
        self._signals = asyncio.Queue()
        self._stop_requested = asyncio.Event()
        self._kill_now = asyncio.Event()
        self._install_signal_handlers(loop)
        server: StatusServer | None = None
        code: int | None = None  # None while running, and if a bug ends the loop
        try:
            subreaper = become_subreaper()
            self.log.info(
                "supervisor_started",
                launcher_pid=os.getpid(),
                subreaper=subreaper,
                restart=self.settings.restart,
                health_url=self.plan.health_url,
            )
            if self.plan.status_port is not None:
                server = StatusServer(self.status, self.plan.status_port)
                try:
                    await server.start()
                except OSError as error:
                    server = None
                    self.log.error(
                        "status_port_unavailable",
                        port=self.plan.status_port,
                        error=str(error),
                        fix="choose another status_port (LAUNCH_STATUS_PORT) or stop what listens there",
                    )
                    code = EXIT_ENVIRONMENT
                    return code
                self.log.info("status_listening", port=server.port)
            dispatcher = asyncio.create_task(self._dispatch_signals())
            try:
                if not await self.cache.take(self._stop_requested):
                    code = EXIT_ENVIRONMENT if self._stop_signal is None else 128 + self._stop_signal
                    return code
                code = await self._supervise()
            finally:
                dispatcher.cancel()
            return code
        finally:
            # Whatever ended the loop (a bug included), nothing may outlive the launcher.
            killed, survivors = await self.reaper.kill_all(self._pgid, KILL_TIMEOUT)
            if killed or survivors:
                self.log.warning("cleanup", killed=killed, survivors=[p.pid for p in survivors])
            self.cache.release()
            if server is not None:
                await server.close()
            await self.prober.close()
            self._remove_signal_handlers(loop)
            if code is None:
                self.log.error("supervisor_failed", why="an unexpected error in the launcher, see its traceback")
            else:
                self.log.info("supervisor_exiting", exit_code=code)

    # Signals

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in FORWARDED_SIGNALS:
            loop.add_signal_handler(signum, self._signals.put_nowait, signum)
        # uvloop refuses add_signal_handler(SIGCHLD) (it reserves it for its own subprocesses, which we
        # never use). So a plain Python handler: Python runs it between two bytecodes of whatever the
        # loop is doing, hence it only writes a byte to a self-pipe, and the loop reaps in an ordinary
        # callback when the pipe becomes readable.
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sigchld_pipe = (read_fd, write_fd)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        loop.add_reader(read_fd, self._on_sigchld_pipe)

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        if self._sigchld_pipe is not None:
            with contextlib.suppress(OSError):  # a full pipe already holds a pending wake-up
                os.write(self._sigchld_pipe[1], b"\0")

    def _on_sigchld_pipe(self) -> None:
        if self._sigchld_pipe is not None:
            with contextlib.suppress(OSError):
                os.read(self._sigchld_pipe[0], 4096)
        self.reaper.reap()

    def _remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in FORWARDED_SIGNALS:
            loop.remove_signal_handler(signum)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self._sigchld_pipe is not None:
            loop.remove_reader(self._sigchld_pipe[0])
            for fd in self._sigchld_pipe:
                os.close(fd)
            self._sigchld_pipe = None

    async def _dispatch_signals(self) -> None:
        while True:
            self._on_signal(await self._signals.get())

    def _on_signal(self, signum: int) -> None:
        name = signal_name(signum)
        if signum in ESCALATING_SIGNALS and self._stop_signal is not None:
            self.log.warning("stop_escalated", signal=name, action="SIGKILL every vLLM process now")
            self._kill_now.set()
            return
        if signum in STOP_SIGNALS and self._stop_signal is None:
            self._stop_signal = signum
            # Not ready at once: traffic must stop before vLLM does.
            self.status.stopping()
            self._stop_requested.set()
            self.log.info("stop_requested", signal=name, stop_timeout_s=self.settings.stop_timeout)
        child, exited = self._child, self._exited
        if child is None or exited is None or exited.done():
            self.log.info("signal_not_forwarded", signal=name, why="vLLM is not running")
            return
        # Only to vLLM's main process, as tini does by default: the API server shuts its engine and
        # workers down itself; signalling them directly would race that shutdown.
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)
        self.log.info("signal_forwarded", signal=name, pid=child.pid)

    # Life cycle

    async def _supervise(self) -> int:
        last: Outcome | None = None
        attempt = 0
        while self._stop_signal is None:
            attempt += 1
            if attempt > 1:
                try:
                    # The NPUs must be free again (our earlier vLLM's leftovers stopped, nobody else's).
                    await asyncio.to_thread(npu.preflight, self.plan, None, self.log)
                except PreflightError as error:
                    self.log.error("preflight_failed", message=error.message, **error.fields())
                    return EXIT_ENVIRONMENT
            outcome = await self._attempt(attempt)
            last = outcome
            if outcome.requested:
                return 0 if outcome.exit_code in self.plan.clean_stop_codes else outcome.exit_code
            if await self.cache.recover(outcome.diagnosis.reason, outcome.was_ready):
                continue  # at once and not counted: the failure was the cache's, not vLLM's
            delay = self.policy.next_delay(
                now=time.monotonic(), retryable=outcome.retryable, was_ready=outcome.was_ready
            )
            if delay is None:
                why = self._why_no_restart(outcome)
                self.log.error("giving_up", exit_code=outcome.exit_code, reason=outcome.diagnosis.reason, why=why)
                self._write_termination_log(outcome, note=f"the launcher gave up: {why}")
                return outcome.exit_code
            self.status.backoff()
            self.log.warning(
                "restarting",
                delay_s=round(delay, 3),
                reason=outcome.diagnosis.reason,
                restart=self.status.restarts + 1,
                restarts_in_window=self.policy.restarts_in_window,
                max_restarts=self.settings.max_restarts,
            )
            if await self._sleep_unless_stopped(delay):
                break
            self.status.restarted()
        # Asked to stop while vLLM was not running (between restarts): end with the last failure.
        if last is not None:
            return last.exit_code
        return 128 + (self._stop_signal or signal.SIGTERM)

    def _why_no_restart(self, outcome: Outcome) -> str:
        if self.settings.restart == "never":
            return "supervisor.restart is never"
        if not outcome.retryable:
            return f"{outcome.diagnosis.reason} is not retried: starting again would fail the same way"
        return (
            f"{self.settings.max_restarts} restarts within supervisor.restart_window "
            f"({self.settings.restart_window:g}s)"
        )

    async def _sleep_unless_stopped(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stop_requested.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _attempt(self, attempt: int) -> Outcome:
        started = time.monotonic()
        try:
            child = spawn(self.plan)
        except OSError as error:
            returncode = 127 if isinstance(error, FileNotFoundError) else 126  # as a shell reports it
            hint = f"cannot start {self.plan.argv[0]!r}: {error.strerror or error}"
            outcome = Outcome(returncode, Diagnosis("spawn_failed", hint), requested=False, was_ready=False)
            self._report(outcome, pid=None)
            return outcome
        # Watch before the first await, so that no SIGCHLD can be handled before we know the pid.
        exited = self.reaper.watch(child.pid)
        exited.add_done_callback(lambda done: _set_returncode(child, done))
        self._child, self._exited, self._pgid = child, exited, child.pid
        self._became_ready = False
        self.status.child_started(child.pid)
        output = ChildOutput(child.pid, on_phase=lambda name: self._phase(name, started, child.pid))
        assert child.stdout is not None and child.stderr is not None
        await output.attach(child.stdout, child.stderr)
        self.log.info(
            "child_started",
            pid=child.pid,
            attempt=attempt,
            argv=[self.plan.mask(arg) for arg in self.plan.argv],
            cwd=self.plan.cwd,
        )
        self._phase("spawned", started, child.pid)

        watcher = asyncio.create_task(self._watch(started, child.pid, output))
        stop_wait = asyncio.create_task(self._stop_requested.wait())
        trigger: str | None = None
        try:
            waits: list[asyncio.Future[Any]] = [exited, watcher, stop_wait]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                trigger = watcher.result()  # re-raises a bug in the watcher rather than hiding it
            if not exited.done():
                await self._stop(child, exited, already_signalled=stop_wait.done(), trigger=trigger)
        finally:
            for task in (watcher, stop_wait):
                task.cancel()
            await asyncio.gather(watcher, stop_wait, return_exceptions=True)

        # vLLM's main process is gone; its workers may not be (they keep NPU memory when left behind).
        killed, survivors = await self.reaper.kill_all(child.pid, KILL_TIMEOUT)
        if killed:
            self.log.warning("leftover_processes_killed", pids=killed)
        # Logs npu_released or npu_still_held; off Ascend it returns at once.
        await asyncio.to_thread(npu.after_stop, self.plan, {child.pid, *killed}, self.log)
        if survivors:
            self.log.error(
                "processes_left",
                pids=[p.pid for p in survivors],
                why="they did not die from SIGKILL (stuck in the kernel?); check `npu-smi info`",
            )
        await output.drain(DRAIN_TIMEOUT)
        returncode = exited.result() if exited.done() else -signal.SIGKILL
        self._child = self._exited = None
        requested = self._stop_signal is not None
        lines = output.recent()
        outcome = Outcome(
            returncode,
            diagnose(returncode, lines, requested=requested, was_ready=self._became_ready, trigger=trigger),
            requested=requested,
            was_ready=self._became_ready,
            trigger=trigger,
            ran_for=time.monotonic() - started,
            lines=lines,
        )
        self._report(outcome, pid=child.pid)
        return outcome

    async def _stop(
        self,
        child: subprocess.Popen[bytes],
        exited: asyncio.Future[int],
        *,
        already_signalled: bool,
        trigger: str | None,
    ) -> None:
        """SIGTERM, up to stop_timeout for vLLM to exit, then SIGKILL to its whole tree."""
        self.status.stopping()
        timeout = self.settings.stop_timeout
        if not already_signalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        self.log.info("stopping", pid=child.pid, trigger=trigger or "signal", stop_timeout_s=timeout)
        kill_now = asyncio.create_task(self._kill_now.wait())
        try:
            waits: list[asyncio.Future[Any]] = [exited, kill_now]
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            kill_now.cancel()
            await asyncio.gather(kill_now, return_exceptions=True)
        if exited.done():
            return
        why = "second stop signal" if self._kill_now.is_set() else f"still running after {timeout:g}s"
        self.log.warning("killing", pid=child.pid, why=why)
        await self.reaper.kill_all(child.pid, KILL_TIMEOUT)

    async def _watch(self, started: float, pid: int, output: ChildOutput) -> str:
        """Wait until vLLM is ready, then watch its health. Returns why it must be stopped."""
        settings = self.settings
        try:
            async with asyncio.timeout(settings.start_timeout):
                await self._until_healthy()
                self._phase("healthy", started, pid)
                if settings.warmup:
                    self.status.warming_up()
                    probe = await self.prober.warmup(timeout=None)  # start_timeout bounds it
                    if probe.ok:
                        self._phase("warm", started, pid)
                    elif probe.status is not None and 400 <= probe.status < 500:
                        # The request was refused (a model name?), the engine itself did not fail.
                        self.log.warning("warmup_rejected", pid=pid, detail=probe.detail)
                    else:
                        self.log.error("warmup_failed", pid=pid, detail=probe.detail)
                        return "warmup_failed"
        except TimeoutError:
            self.log.error("start_timeout", pid=pid, start_timeout_s=settings.start_timeout)
            return "start_timeout"
        output.stop_watching_phases()
        startup = time.monotonic() - started
        self._became_ready = True
        await self.cache.ready()
        self.status.became_ready(startup)
        self.log.info("ready", pid=pid, startup_s=round(startup, 3), phases=dict(self.status.phases))
        return await self._watch_health(pid)

    async def _until_healthy(self) -> None:
        if self.plan.probe == "process":
            return  # nothing serves HTTP (a Ray worker node): running is ready
        # Faster than health_interval while starting: readiness should not lag by ten seconds.
        interval = min(1.0, self.settings.health_interval)
        while not (await self.prober.health(self.settings.health_timeout)).ok:
            await asyncio.sleep(interval)

    async def _watch_health(self, pid: int) -> str:
        settings = self.settings
        if self.plan.probe == "process":
            # Nothing to probe; the attempt ends when the process exits or a stop is requested.
            forever: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            return await forever
        failures = 0
        while True:
            await asyncio.sleep(settings.health_interval)
            probe = await self.prober.health(settings.health_timeout)
            self.status.health(probe.ok)
            if probe.ok:
                if failures:
                    self.log.info("health_recovered", pid=pid, after_failures=failures)
                failures = 0
                continue
            failures += 1
            self.log.warning(
                "health_check_failed",
                pid=pid,
                failures=failures,
                unhealthy_after=settings.unhealthy_after,
                detail=probe.detail,
            )
            if failures >= settings.unhealthy_after:
                return "unhealthy"

    def _phase(self, name: str, started: float, pid: int) -> None:
        elapsed = time.monotonic() - started
        self.status.phase(name, elapsed)
        self.log.info("startup_phase", phase=name, elapsed_s=round(elapsed, 3), pid=pid)

    def _report(self, outcome: Outcome, pid: int | None) -> None:
        diagnosis = outcome.diagnosis
        self.status.child_exited(outcome.exit_code, diagnosis.reason, diagnosis.hint)
        fields: dict[str, object] = {
            "pid": pid,
            "status": exit_code(outcome.returncode),
            "reason": diagnosis.reason,
            "ran_s": round(outcome.ran_for, 3),
        }
        if outcome.returncode < 0:
            fields["signal"] = signal_name(-outcome.returncode)
        if outcome.trigger:
            fields["trigger"] = outcome.trigger
        if diagnosis.hint:
            fields["hint"] = diagnosis.hint
        if outcome.requested:
            self.log.info("child_exited", **fields)
            return
        self.log.error("child_exited", **fields, last_lines=outcome.lines[-10:])
        self._write_termination_log(outcome)

    def _write_termination_log(self, outcome: Outcome, note: str = "") -> None:
        message = termination_message(outcome.returncode, outcome.diagnosis, outcome.lines, note)
        write_termination_log(self.settings.termination_log, message)


def _set_returncode(child: subprocess.Popen[bytes], done: asyncio.Future[int]) -> None:
    # We reaped it: Popen must never call waitpid() itself (it could reap a recycled pid).
    if not done.cancelled():
        child.returncode = done.result()


def run_supervised(plan: Plan, *, spare: Sequence[psutil.Process] = ()) -> int:
    """Start vLLM as the plan says and supervise it until it is gone for good; the exit code to use.

    `spare`: processes whose trees survive the cleanup after each vLLM (a leader's Ray head)."""
    # Everything imported so far lives as long as the launcher: out of the collector's sight, it costs
    # no idle GC passes, and the interpreter's exit (part of a pod's stop time) takes ~10 ms instead of
    # ~60 ms of collecting pydantic's and aiohttp's import-time objects.
    gc.freeze()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(Supervisor(plan, spare).run())


def exec_plan(plan: Plan) -> NoReturn:
    """`--exec`: replace the launcher with vLLM (no supervision, no reaping, no restart)."""
    log = get_logger()
    if plan.cache is not None:
        # Nothing stays to lock the entry or mark it complete: it is only a directory for vLLM.
        os.makedirs(plan.cache.data, exist_ok=True)
        log.warning(
            "cache_unmanaged",
            fingerprint=plan.cache.fingerprint,
            why="--exec: the entry is not locked and never marked complete; `launch run` manages it",
        )
    log.info("exec", argv=[plan.mask(arg) for arg in plan.argv], cwd=plan.cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if plan.cwd:
            os.chdir(plan.cwd)
        os.execvpe(plan.argv[0], plan.argv, plan.child_environ(os.environ))
    except OSError as error:
        code = 127 if isinstance(error, FileNotFoundError) else 126
        log.error("exec_failed", program=plan.argv[0], error=str(error), exit_code=code)
        raise SystemExit(code) from None
