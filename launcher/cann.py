"""CANN's environment, imported the way a bash ENTRYPOINT would: find the toolkit's and NNAL's
`set_env.sh` (and the `env_files` a profile lists, such as a ModelArts `~/.bashrc`), source them once
in one bash, and keep the variables they add or change.

Without this a Python ENTRYPOINT starts vLLM with no `LD_LIBRARY_PATH` for CANN, and it fails much
later with `libhccl.so: cannot open shared object file` or "Failed to infer device type".

Acting part: it reads files and runs bash; what a missing toolkit means is decided by the rules
(`rules.runtime`), which read the `CannEnv` this module returns.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from launcher import command
from launcher.settings import LaunchSettings

# Where the CANN installers put things (root installs, then a user's own); `cann.toolkit_home` and
# `cann.nnal_home` replace these lists. CANN 8.5 and later install to /usr/local/Ascend/cann.
STANDARD_TOOLKIT_HOMES = ("/usr/local/Ascend/ascend-toolkit", "/usr/local/Ascend/cann", "~/Ascend/ascend-toolkit")
STANDARD_NNAL_HOMES = ("/usr/local/Ascend/nnal", "~/Ascend/nnal")
# Variables set_env.sh exports: when the container already has them, it was set up before us.
TOOLKIT_MARKERS = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")
NNAL_MARKERS = ("ATB_HOME_PATH",)
# What to do when the toolkit is missing (said by `check`, `run` and `doctor`).
TOOLKIT_FIX = (
    "use an image with CANN installed, or point cann.toolkit_home (LAUNCH_CANN__TOOLKIT_HOME) at the directory "
    "holding set_env.sh, or list the file that sets it up in env_files (e.g. /home/ma-user/.bashrc on ModelArts)"
)
# Variables bash itself sets; they are not part of what the scripts changed.
SHELL_VARIABLES = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})

# Sources each item in order, skipping CANN's scripts once the environment has them (a ModelArts
# ~/.bashrc usually sources set_env.sh itself), and reports progress so a script that ends the shell
# (`exit`) can be named. `set --` first: a sourced script sees no positional parameters of ours.
_SOURCE_SCRIPT = r"""
dump=$1; shift
items=("$@"); set --
for item in "${items[@]}"; do
  kind=${item%%:*}; path=${item#*:}
  case $kind in
    toolkit) [ -n "${ASCEND_TOOLKIT_HOME:-}${ASCEND_HOME_PATH:-}" ] && continue ;;
    nnal) [ -n "${ATB_HOME_PATH:-}" ] && continue ;;
  esac
  printf 'start:%s\n' "$path"
  . "$path" >&2 </dev/null
  printf 'done:%s\n' "$path"
done
env -0 >"$dump"
"""


@dataclass(frozen=True)
class CannEnv:
    """What was found and sourced. `checked` is False when nothing was looked at (render, no Ascend)."""

    checked: bool = False
    toolkit: str | None = None  # the toolkit's home directory (found, or named by the environment)
    version: str | None = None  # from ascend_toolkit_install.info
    nnal: str | None = None  # NNAL's atb/set_env.sh when found
    already: tuple[str, ...] = ()  # "toolkit", "nnal": set up in the environment before the launcher
    sourced: tuple[str, ...] = ()  # files sourced, in order
    changes: Mapping[str, str] = field(default_factory=dict)  # variables they added or changed
    looked_for: tuple[str, ...] = ()  # the toolkit set_env.sh paths that were tried
    missing_env_files: tuple[str, ...] = ()
    error: str | None = None  # sourcing failed: timeout, no bash, a script that ended the shell


def _expand(path: str, environ: Mapping[str, str]) -> str:
    home = environ.get("HOME") or "/root"
    if path == "~" or path.startswith("~/"):
        return home + path[1:]
    return path


def _script(home: str, names: tuple[str, ...]) -> str:
    """`home` may name the script itself or the directory that holds it."""
    if home.endswith(".sh"):
        return home
    return str(Path(home, *names[:-1]) / names[-1]) if names else home


def _candidates(setting: str | None, standard: tuple[str, ...], environ: Mapping[str, str]) -> list[str]:
    return [_expand(setting, environ)] if setting else [_expand(p, environ) for p in standard]


def find_toolkit(setting: str | None, environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The toolkit's set_env.sh and every path tried."""
    tried = [_script(home, ("set_env.sh",)) for home in _candidates(setting, STANDARD_TOOLKIT_HOMES, environ)]
    return next((p for p in tried if Path(p).is_file()), None), tried


def find_nnal(setting: str | None, environ: Mapping[str, str]) -> str | None:
    for home in _candidates(setting, STANDARD_NNAL_HOMES, environ):
        for script in (_script(home, ("atb", "set_env.sh")), _script(home, ("set_env.sh",))):
            if Path(script).is_file():
                return script
    return None


def toolkit_version(home: str | None) -> str | None:
    """CANN's version from `<home>[/latest]/<arch>-linux/ascend_toolkit_install.info` (`version=8.0.0`)."""
    if not home:
        return None
    base = Path(home)
    arch = platform.machine() or "*"
    patterns = [f"{arch}-linux/ascend_toolkit_install.info", "*-linux/ascend_toolkit_install.info"]
    for root in (base, base / "latest"):
        for pattern in patterns:
            for info in sorted(root.glob(pattern)):
                try:
                    text = info.read_text(errors="replace")
                except OSError:
                    continue
                for line in text.splitlines():
                    key, sep, value = line.partition("=")
                    if sep and key.strip() == "version" and value.strip():
                        return value.strip()
    return None


def capture(settings: LaunchSettings, environ: Mapping[str, str], *, ascend: bool) -> CannEnv:
    """Find and source what the settings and the dialect call for; off Ascend only `env_files`."""
    already = tuple(
        name
        for name, markers in (("toolkit", TOOLKIT_MARKERS), ("nnal", NNAL_MARKERS))
        if ascend and any(environ.get(m) for m in markers)
    )
    toolkit_script, looked_for = find_toolkit(settings.cann.toolkit_home, environ) if ascend else (None, [])
    nnal_script = find_nnal(settings.cann.nnal_home, environ) if ascend else None
    env_files = [_expand(p, environ) for p in settings.env_files]
    missing = tuple(p for p in env_files if not Path(p).is_file())

    items = [f"env:{p}" for p in env_files if p not in missing]
    if toolkit_script and "toolkit" not in already:
        items.append(f"toolkit:{toolkit_script}")
    if nnal_script and "nnal" not in already:
        items.append(f"nnal:{nnal_script}")
    changes: dict[str, str] = {}
    sourced: tuple[str, ...] = ()
    error = None
    if items:
        try:
            changes, sourced = _source(items, environ, settings.cann.source_timeout)
        except SourceError as exc:
            error = str(exc)
    # The toolkit's home: named by the environment (before us, or by an env file), else where we found it.
    named = next((v for m in TOOLKIT_MARKERS if (v := changes.get(m) or environ.get(m))), None)
    toolkit = named or (str(Path(toolkit_script).parent) if toolkit_script else None)
    return CannEnv(
        checked=True,
        toolkit=toolkit if ascend else None,
        version=toolkit_version(toolkit) if ascend else None,
        nnal=nnal_script,
        already=already,
        sourced=sourced,
        changes=changes,
        looked_for=tuple(looked_for),
        missing_env_files=missing,
        error=error,
    )


class SourceError(Exception):
    pass


def _source(items: list[str], environ: Mapping[str, str], timeout: float) -> tuple[dict[str, str], tuple[str, ...]]:
    bash = shutil.which("bash", path=environ.get("PATH") or os.defpath) or shutil.which("bash")
    paths = [item.split(":", 1)[1] for item in items]
    if bash is None:
        raise SourceError(f"bash is needed to source {', '.join(paths)} and was not found on PATH")
    with tempfile.TemporaryDirectory(prefix="launch-cann-") as tmp:
        dump = Path(tmp) / "env"
        argv = [bash, "--noprofile", "--norc", "-c", _SOURCE_SCRIPT, "launch-source-env", str(dump), *items]
        try:
            done = command.run(argv, env=environ, timeout=timeout)
        except command.TimedOut:
            raise SourceError(
                f"sourcing {', '.join(paths)} did not finish within {timeout:g}s (cann.source_timeout)"
            ) from None
        except OSError as exc:
            raise SourceError(f"cannot run {bash}: {exc.strerror}") from None
        started = [line[6:] for line in done.stdout.splitlines() if line.startswith("start:")]
        finished = tuple(line[5:] for line in done.stdout.splitlines() if line.startswith("done:"))
        try:
            raw = dump.read_bytes()
        except OSError:
            raw = b""
    if not raw:
        culprit = started[-1] if started and started[-1] not in finished else None
        tail = done.stderr.strip().splitlines()[-3:]
        raise SourceError(
            (f"{culprit} ended the shell (exit status {done.returncode})" if culprit else "bash failed")
            + (f": {' / '.join(tail)}" if tail else "")
        )
    after: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.decode("utf-8", errors="replace").partition("=")
        if sep and name:
            after[name] = value
    changes = {k: v for k, v in after.items() if k not in SHELL_VARIABLES and environ.get(k) != v}
    return changes, finished
