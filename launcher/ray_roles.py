"""`launch run` for multi-node roles: the acting part around the supervisor.

Leader: start Ray's head (`ray start --head`, which daemonizes), wait with progress until the group's
nodes and NPUs have joined (`ray status`, a subprocess: the launcher never imports Ray), then supervise
vLLM as on a single node, sparing the head's processes when it cleans up after each vLLM; when the
supervisor is done, stop the head (SIGTERM, then SIGKILL after `ray.stop_timeout`).

Worker: wait until the leader's head answers, then supervise `ray start --address=... --block` as the
child: signals, restarts and the tree kill are the supervisor's, unchanged.

While waiting, the status endpoint answers (`/readyz` 503 "waiting_for_ray"), SIGTERM/SIGINT end the
wait at once (128+N), and a wait longer than `ray.wait_timeout` ends with exit 3 and a message that says
how far the group got. The head is stopped by its processes, never with `ray stop`, which would stop
every Ray on the host (other pods' on a shared host, the workers' in tests on one machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import psutil
import uvloop

from launcher import roles, supervisor
from launcher.errors import PreflightError
from launcher.failures import write_termination_log
from launcher.logs import get_logger
from launcher.plan import Plan, RayPlan
from launcher.reaper import become_subreaper, descendants, reap_all, signal_name, subtrees
from launcher.status import Status, StatusServer

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
STATUS_TIMEOUT = 30.0  # one `ray status`
PROGRESS_EVERY = 30.0  # a waiting line at least this often, even when nothing changed
CONNECT_TIMEOUT = 3.0
KILL_TIMEOUT = 5.0


def run(plan: Plan) -> int:
    """Run the plan's role; the exit code of the launcher."""
    assert plan.ray is not None
    if plan.ray.role == "worker":
        return _run_worker(plan, plan.ray)
    return _run_leader(plan, plan.ray)


# Worker


def _run_worker(plan: Plan, ray: RayPlan) -> int:
    code = _prepare(plan, lambda status: _wait_for_head(ray, status))
    if code is not None:
        return code
    return supervisor.run_supervised(plan)


async def _wait_for_head(ray: RayPlan, status: Status) -> None:
    """Until the head's port accepts a connection: the leader pod may start later, or pull its image."""
    log = get_logger()
    host, _, port_text = ray.address.rpartition(":")
    host, port = host.strip("[]"), int(port_text)
    started = time.monotonic()
    last_detail, last_log = "", 0.0
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as error:
            detail = str(error) or type(error).__name__
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            waited = time.monotonic() - started
            status.phase("ray_head_reachable", waited)
            log.info("ray_head_reachable", address=ray.address, waited_s=round(waited, 3))
            return
        waited = time.monotonic() - started
        if waited >= ray.wait_timeout:
            raise PreflightError(
                f"the Ray head at {ray.address} did not answer within {ray.wait_timeout:g}s ({detail})",
                key="ray.leader_address",
                value=ray.address,
                fix="check the leader pod (kubectl logs), that its address resolves from this pod and that "
                "ray.port is open between the pods; or raise ray.wait_timeout",
            )
        if detail != last_detail or time.monotonic() - last_log >= PROGRESS_EVERY:
            log.info("ray_head_waiting", address=ray.address, detail=detail, waited_s=round(waited, 1))
            last_detail, last_log = detail, time.monotonic()
        await asyncio.sleep(min(ray.poll_interval, max(ray.wait_timeout - waited, 0.01)))


# Leader


class Head:
    """Ray's head on the leader: started before vLLM, stopped after it, by its own processes."""

    def __init__(self, plan: Plan, ray: RayPlan) -> None:
        self.plan = plan
        self.ray = ray
        self.processes: list[psutil.Process] = []  # what `ray start --head` left running (its daemons)
        self.log = get_logger()

    async def start(self, status: Status) -> None:
        started = time.monotonic()
        self.log.info("ray_head_starting", argv=[self.plan.mask(a) for a in self.ray.head_argv])
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.ray.head_argv,
                env=self.plan.child_environ(os.environ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher only
            )
        except OSError as error:
            raise PreflightError(
                f"cannot start Ray's head: {error.strerror or error}",
                key="ray.command",
                value=self.ray.head_argv[0],
                fix="install Ray in the image (pip install ray), or point ray.command at the Ray CLI",
            ) from None
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = self.plan.mask(raw.decode("utf-8", "replace").rstrip())
                if line:
                    lines.append(line)
                    self.log.info(line, source="ray", stream="stdout", pid=proc.pid)
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled by a stop signal: the head may be half started
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            self.processes = _our_processes()
        if code != 0:
            raise PreflightError(
                f"`ray start --head` failed with exit status {code}: {lines[-1] if lines else 'no output'}",
                key="ray.port",
                value=self.ray.address,
                fix="read Ray's lines above; is ray.port free on this node (ss -ltnp)?",
            )
        elapsed = time.monotonic() - started
        status.phase("ray_head_started", elapsed)
        self.log.info("ray_head_started", address=self.ray.address, pids=[p.pid for p in self.processes])

    def alive(self) -> bool:
        return any(_running(p) for p in self.processes)

    async def wait_for_group(self, status: Status) -> None:
        ray = self.ray
        nodes_wanted, npus_wanted = ray.group_size or 1, ray.expected_npus
        started = time.monotonic()
        last: tuple[int, float | None] | None = None
        last_log = 0.0
        while True:
            nodes, npus, detail = await self._group()
            waited = time.monotonic() - started
            if nodes >= nodes_wanted and (npus_wanted is None or (npus or 0) >= npus_wanted):
                status.phase("ray_group_ready", waited)
                self.log.info("ray_group_ready", nodes=nodes, npus=npus, waited_s=round(waited, 3))
                return
            progress = {"nodes": nodes, "nodes_expected": nodes_wanted, "npus": npus, "npus_expected": npus_wanted}
            if not self.alive():
                raise PreflightError(
                    "Ray's head stopped while the launcher waited for the group",
                    key="ray.port",
                    value=ray.address,
                    fix="read Ray's lines above and its logs under ray.temp_dir (default /tmp/ray/session_latest)",
                )
            if waited >= ray.wait_timeout:
                npus_text = f" and {_number(npus)} of {npus_wanted} NPUs" if npus_wanted is not None else ""
                raise PreflightError(
                    f"the Ray group did not form within ray.wait_timeout={ray.wait_timeout:g}s: {nodes} of "
                    f"{nodes_wanted} nodes{npus_text} joined",
                    key="ray.group_size",
                    value=nodes_wanted,
                    fix=f"check the worker pods (kubectl logs), that they reach {ray.address}, and that each "
                    f"one has {ray.npus_per_node or 'its'} NPUs; or raise ray.wait_timeout",
                )
            if (nodes, npus) != last or time.monotonic() - last_log >= PROGRESS_EVERY:
                self.log.info("ray_group_waiting", **progress, waited_s=round(waited, 1), detail=detail)
                last, last_log = (nodes, npus), time.monotonic()
            await asyncio.sleep(min(ray.poll_interval, max(ray.wait_timeout - waited, 0.01)))

    async def _group(self) -> tuple[int, float | None, str]:
        """(nodes, NPUs, what went wrong) from one `ray status`."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.ray.status_argv,
                env=self.plan.child_environ(os.environ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            return 0, None, f"cannot run `ray status`: {error}"
        try:
            out, err = await asyncio.wait_for(proc.communicate(), STATUS_TIMEOUT)
        except TimeoutError:
            return 0, None, f"`ray status` did not answer within {STATUS_TIMEOUT:g}s"
        finally:
            if proc.returncode is None:  # timed out, or a stop signal cancelled the wait
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        nodes, npus = roles.parse_status(out.decode("utf-8", "replace"))
        detail = "" if proc.returncode == 0 else _last_line(err) or f"`ray status` exited with {proc.returncode}"
        return nodes, npus, detail

    def stop(self) -> None:
        """Stop the head as `ray stop` orders it (raylet, then the other daemons, then the GCS), but only
        its own processes: SIGTERM, then SIGKILL after a third of ray.stop_timeout each (at once after a
        second stop signal)."""
        if not self.processes:
            return
        kill_now = _escalation()
        started = time.monotonic()
        try:
            tracked = _track({}, self.processes)
            self.log.info("ray_head_stopping", pids=sorted(tracked), stop_timeout_s=self.ray.stop_timeout)
            killed: list[int] = []
            for bucket in ("raylet", "other", "gcs_server"):
                tracked = _track(tracked, list(tracked.values()))
                group = [p for p in tracked.values() if _running(p) and _bucket(p) == bucket]
                killed += _terminate(group, self.ray.stop_timeout / 3, kill_now)
            tracked = _track(tracked, list(tracked.values()))
            killed += _terminate([p for p in tracked.values() if _running(p)], 0.0, kill_now)
            if killed:
                why = "second stop signal" if kill_now() else "still running after SIGTERM"
                self.log.warning("ray_head_killed", pids=killed, why=why)
            self.log.info("ray_head_stopped", stop_s=round(time.monotonic() - started, 3))
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.processes = []


def _run_leader(plan: Plan, ray: RayPlan) -> int:
    # Ray's daemons outlive `ray start --head`: they must be re-parented to us, not to the host's init.
    become_subreaper()
    head = Head(plan, ray)

    async def prepare(status: Status) -> None:
        await head.start(status)
        await head.wait_for_group(status)

    try:
        code = _prepare(plan, prepare)
        if code is None:
            code = supervisor.run_supervised(plan, spare=head.processes)
    finally:
        head.stop()
        _sweep()
    return code


# Both


def _prepare(plan: Plan, work: Callable[[Status], Awaitable[None]]) -> int | None:
    """Run `work` with the status endpoint up and stop signals handled; None when it finished, else the
    exit code (128+N after signal N). A PreflightError passes through, after the termination log."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(_preparing(plan, work))
        except PreflightError as error:
            write_termination_log(plan.supervisor.termination_log, error.message)
            raise


async def _preparing(plan: Plan, work: Callable[[Status], Awaitable[None]]) -> int | None:
    log = get_logger()
    loop = asyncio.get_running_loop()
    status = Status()
    status.state = "waiting_for_ray"
    stopped: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not stopped.done():
            stopped.set_result(signum)

    for stop in STOP_SIGNALS:
        loop.add_signal_handler(stop, on_signal, int(stop))
    server: StatusServer | None = None
    task = asyncio.ensure_future(work(status))
    try:
        if plan.status_port is not None:
            server = StatusServer(status, plan.status_port)
            try:
                await server.start()
            except OSError as error:
                server = None
                raise PreflightError(
                    f"the status port cannot be bound: {error.strerror or error}",
                    key="status_port",
                    value=plan.status_port,
                    fix="choose another status_port (LAUNCH_STATUS_PORT) or stop what listens there",
                ) from None
            log.info("status_listening", port=server.port, state=status.state)
        waits: list[asyncio.Future[Any]] = [task, stopped]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if stopped.done() and not task.done():
            signum = stopped.result()
            log.info("stop_requested", signal=signal_name(signum), phase="waiting for Ray")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return 128 + signum
        task.result()  # a PreflightError ends the launcher with exit 3
        return None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if server is not None:
            await server.close()
        for stop in STOP_SIGNALS:
            loop.remove_signal_handler(stop)


def _our_processes() -> list[psutil.Process]:
    return [p for p in descendants() if _running(p)]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _track(tracked: dict[int, psutil.Process], roots: list[psutil.Process]) -> dict[int, psutil.Process]:
    """`tracked` plus every live descendant of `roots` (children re-parented to us once their parent
    dies would otherwise escape)."""
    found = dict(tracked)
    wanted = subtrees(roots)
    for proc in descendants():
        if proc.pid in wanted and proc.pid not in found:
            found[proc.pid] = proc
    for proc in roots:
        if proc.pid not in found and _running(proc):
            found[proc.pid] = proc
    return found


def _bucket(proc: psutil.Process) -> str:
    try:
        name = proc.name()
    except psutil.Error:
        return "other"
    return name if name in ("raylet", "gcs_server") else "other"


def _terminate(group: list[psutil.Process], grace: float, kill_now: Callable[[], bool]) -> list[int]:
    """SIGTERM `group`, wait up to `grace`, SIGKILL the rest; the pids that needed SIGKILL."""
    for proc in group:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        reap_all()  # they are our children (re-parented): their exit is seen only once reaped
        left = [p for p in group if _running(p)]
        if not left:
            return []
        if kill_now() or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for proc in left:
        _signal(proc, signal.SIGKILL)
    deadline = time.monotonic() + KILL_TIMEOUT
    while [p for p in left if _running(p)] and time.monotonic() < deadline:
        reap_all()
        time.sleep(0.01)
    return [p.pid for p in left]


def _signal(proc: psutil.Process, signum: int) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signum)  # psutil checks the start time: never a recycled pid


def _escalation() -> Callable[[], bool]:
    """While the head stops, a second SIGTERM/SIGINT means "kill it now" instead of ending the launcher."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)
    return lambda: bool(received)


def _sweep() -> None:
    """Nothing outlives the launcher: kill and reap whatever is still below it."""
    deadline = time.monotonic() + KILL_TIMEOUT
    while time.monotonic() < deadline:
        reap_all()
        left = _our_processes()
        if not left:
            return
        for proc in left:
            _signal(proc, signal.SIGKILL)
        time.sleep(0.02)
    get_logger().error("processes_left", pids=[p.pid for p in _our_processes()])


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _number(value: float | None) -> Any:
    if value is None:
        return 0
    return int(value) if float(value).is_integer() else value
