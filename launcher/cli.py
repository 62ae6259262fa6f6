"""`launch [COMMAND] [OPTIONS] [-- EXTRA_VLLM_ARGS...]` — the command line of DESIGN.md.

Commands: run (default), render, check, doctor, profiles, demo. Bad input ends with exit 2 (configuration)
or 3 (environment) and a message; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from launcher import __version__, logs
from launcher.errors import EXIT_CONFIG, EXIT_OK, ConfigError, LaunchError
from launcher.plan import Plan

COMMANDS = ("run", "render", "check", "doctor", "profiles", "cache", "demo")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p", "--profile", action="append", default=[], metavar="NAME|PATH", help="profile (repeatable)"
    )
    parser.add_argument("--model", metavar="PATH", help="model directory (Hugging Face layout)")
    parser.add_argument("--config", metavar="FILE", help="user profile file applied after the profiles")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="sets",
        help="e.g. vllm.max_model_len=8192",
    )
    parser.add_argument("--dialect", metavar="NAME", help="vLLM dialect (default: detected)")
    parser.add_argument(
        "--role",
        choices=("auto", "single", "leader", "worker"),
        help="multi-node role on Ray (default: auto, from LeaderWorkerSet's LWS_* variables; LAUNCH_ROLE)",
    )


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="launch",
        description="Validate, prepare, start and supervise vLLM on Ascend NPUs.",
        epilog="Arguments after `--` are passed to vLLM verbatim. Exit codes: 0 ok, 2 invalid "
        "configuration, 3 environment/preflight failure, else vLLM's status (128+N for signal N).",
    )
    top.add_argument("--version", action="version", version=f"launch {__version__}")
    sub = top.add_subparsers(dest="command")
    run = sub.add_parser("run", help="validate, prepare, start and supervise vLLM (default)")
    _common(run)
    run.add_argument("--exec", action="store_true", help="replace the launcher with vLLM (no supervision)")
    render = sub.add_parser("render", help="print the plan")
    _common(render)
    render.add_argument("--format", choices=("json", "shell"), default="json")
    check = sub.add_parser("check", help="validate and preflight, start nothing")
    _common(check)
    doctor = sub.add_parser("doctor", help="check this machine: vLLM, CANN, NPUs, model, cache, ports")
    _common(doctor)
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    profiles = sub.add_parser("profiles", help="list profiles, or `profiles show NAME`")
    profiles.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    profiles.add_argument("name", nargs="?")
    from launcher import cachecli

    cachecli.add_parser(sub, _common)
    demo = sub.add_parser("demo", help="serve a tiny local model with the real vLLM (CPU)")
    demo.add_argument("rest", nargs=argparse.REMAINDER)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, extra = args_in[:cut], args_in[cut + 1 :]
    if not args_in or args_in[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args_in = ["run", *args_in]
    if args_in[0] == "demo" and not {"-h", "--help"} & set(args_in[1:]):
        # argparse's REMAINDER does not take a leading option: hand `run`'s arguments over untouched.
        args = argparse.Namespace(command="demo", rest=args_in[1:])
    else:
        args = _parser().parse_args(args_in)
    command: str = args.command or "run"
    environ = dict(os.environ)
    # Only `run` owns stdout for logs; the other commands print their answer there.
    supervising = command in ("run", "demo")
    stream = sys.stdout if supervising else sys.stderr
    # `run` logs JSON lines for the cluster unless told otherwise; the other commands talk to a person.
    fmt = environ.get("LAUNCH_LOG_FORMAT") or (None if supervising else "console")
    logs.configure(fmt, environ.get("LAUNCH_LOG_LEVEL") or "info", stream)
    try:
        if command == "profiles":
            return _profiles(args)
        if command == "cache":
            from launcher import cachecli, planner

            settings = planner.resolve(_request(args, extra), environ).settings
            return cachecli.run(args, settings.cache_dir)
        if command == "demo":
            from launcher import demo

            return demo.main(list(args.rest) + (["--", *extra] if extra else []))
        if command == "doctor":
            from launcher import doctor

            return doctor.main(_request(args, extra), environ, as_json=args.json)
        return _with_plan(command, args, extra, environ)
    except LaunchError as exc:
        return _fail(exc, stream)
    except BrokenPipeError:
        # `launch render | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _fail(exc: LaunchError, stream: TextIO) -> int:
    """Exit 2/3 with the message on stderr; `run` also logs it as an event for the cluster's logs."""
    if stream is not sys.stderr:
        logs.get_logger().error(exc.kind, message=exc.message, **exc.fields())
    print(f"launch: error: {logs.redact(exc.message)}", file=sys.stderr)
    return exc.exit_code


def _request(args: argparse.Namespace, extra: list[str]) -> Any:
    from launcher.planner import Request

    return Request(
        profiles=list(args.profile),
        config=args.config,
        model=args.model,
        dialect=args.dialect,
        role=args.role,
        sets=list(args.sets),
        extra_args=extra,
    )


def _with_plan(command: str, args: argparse.Namespace, extra: list[str], environ: dict[str, str]) -> int:
    from launcher import host, planner, preflight

    request = _request(args, extra)
    facts = host.gather(environ)
    resolved = planner.resolve(request, environ)
    if command != "render":
        # Render shows the configuration: it sources no CANN script and runs no npu-smi (fast, and the
        # same on every machine); check and run import CANN's environment into the plan.
        ascend = planner.target_dialect(resolved, facts).ascend
        facts = host.with_runtime(facts, resolved.settings, ascend=ascend)
    plan = planner.build(request, facts, strict=command != "render", resolved=resolved)
    logs.add_secrets(plan.secrets)
    log = logs.get_logger()
    for line in plan.info:
        log.info("plan_info", message=line)
    for line in plan.warnings:
        log.warning("plan_warning", message=line)
    if command == "render":
        print(plan.to_json() if args.format == "json" else render_shell(plan))
        return EXIT_OK
    if getattr(args, "exec", False) and plan.role == "leader":
        raise ConfigError(
            "the leader starts Ray's head, waits for the group and stops the head after vLLM: "
            "it cannot replace itself with vLLM",
            key="--exec",
            source="command line",
            fix="drop --exec on the leader (workers and single nodes may use it)",
        )
    if plan.role != "worker":  # a Ray worker node serves no HTTP itself
        preflight.port_is_free(plan)
        preflight.tmpdir_fits(plan, environ)
    from launcher import npu  # not for render: psutil and the preflight are for check and run

    npu.preflight(plan, facts, log)
    if command == "check":
        print(
            f"ok: {', '.join(plan.profiles)} on {plan.dialect}: {plan.model} "
            f"({len(plan.warnings)} warning{'s' if len(plan.warnings) != 1 else ''})"
        )
        return EXIT_OK
    from launcher import supervisor

    log.info("plan", argv=plan.mask(shlex.join(plan.argv)), env=plan.to_dict()["env"], dialect=plan.dialect)
    if args.exec:
        supervisor.exec_plan(plan)
    if plan.ray is not None:
        from launcher import ray_roles

        return ray_roles.run(plan)
    return supervisor.run_supervised(plan)


def render_shell(plan: Plan) -> str:
    """A runnable script equivalent to the guide's run_vllm.sh, secrets masked."""
    lines = [
        "#!/usr/bin/env bash",
        f"# Rendered by launch {__version__}: profiles {', '.join(plan.profiles)}; dialect {plan.dialect}",
    ]
    lines += [f"# warning: {plan.mask(w)}" for w in plan.warnings]
    lines += [f"# {plan.mask(i)}" for i in plan.info]
    lines.append("set -euo pipefail")
    env = plan.to_dict()["env"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    if plan.cwd:
        lines.append(f"mkdir -p {shlex.quote(plan.cwd)} && cd {shlex.quote(plan.cwd)}")
    if plan.ray is not None and plan.ray.head_argv:
        lines.append(shlex.join(plan.mask(a) for a in plan.ray.head_argv))
        npus = f" and {plan.ray.expected_npus} NPUs" if plan.ray.expected_npus is not None else ""
        wait = f"# launch waits here until {plan.ray.group_size} nodes{npus} have joined: "
        lines.append(wait + shlex.join(plan.ray.status_argv))
    # One line per flag with its values, as the guide's run_vllm.sh is written.
    groups: list[list[str]] = [[]]
    for arg in plan.argv:
        if arg.startswith("--") and groups[0]:
            groups.append([])
        groups[-1].append(shlex.quote(plan.mask(arg)))
    body, parts = " ".join(groups[0]), [" ".join(g) for g in groups[1:]]
    lines.append("exec " + " \\\n  ".join([body, *parts]))
    return "\n".join(lines)


def _profiles(args: argparse.Namespace) -> int:
    from launcher import profiles
    from launcher.layers import merge

    if args.action == "list":
        if args.name:
            return _fail(
                LaunchError(
                    "`profiles` takes no name",
                    key="profiles",
                    value=args.name,
                    fix="use `profiles show NAME`",
                ),
                sys.stderr,
            )
        names = profiles.builtin_names()
        width = max(len(n) for n in names)
        for name in names:
            print(f"{name:<{width}}  {profiles.load(name).description}")
        return EXIT_OK
    if not args.name:
        return _fail(LaunchError("which profile?", key="profiles show", fix="launch profiles show graph"), sys.stderr)
    chain = profiles.expand([args.name], origin="profiles show")
    merged = merge(profiles.layers_for(chain))
    document: dict[str, Any] = {"description": chain[-1].description}
    if len(chain) > 1:
        document["composed_of"] = [p.name for p in chain]
    limits = [d for d, _ in merged.dialect_limits]
    if limits:
        document["dialects"] = sorted(set.intersection(*(set(d) for d in limits)))
    document.update(merged.data)
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return EXIT_OK if EXIT_OK == 0 else EXIT_CONFIG
