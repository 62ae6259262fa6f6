"""`launch cache list|show|prune|clear`: what is in LAUNCH_CACHE_DIR, and removing what nobody uses."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from launcher.cache import CacheDir, CacheError, EntryInfo
from launcher.errors import ConfigError
from launcher.settings import parse_duration, parse_size


def add_parser(sub: Any, common: Any) -> None:
    cache = sub.add_parser("cache", help="list, show, prune or clear graph-compile cache entries")
    actions = cache.add_subparsers(dest="cache_action", required=True)
    listing = actions.add_parser("list", help="entries with state, model, size, last use")
    common(listing)
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="the inputs of one entry's fingerprint")
    common(show)
    show.add_argument("fingerprint")
    prune = actions.add_parser("prune", help="remove least recently used entries nobody uses")
    common(prune)
    prune.add_argument("--max-bytes", type=str, help="keep at most this much, e.g. 50G")
    prune.add_argument("--max-entries", type=int, help="keep at most this many entries")
    prune.add_argument("--older-than", type=str, help="remove entries unused for this long, e.g. 7d")
    clear = actions.add_parser("clear", help="remove one entry, or every entry nobody uses")
    common(clear)
    clear.add_argument("fingerprint", nargs="?")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def _age(stamp: Any) -> str:
    if not isinstance(stamp, (int, float)) or not stamp:
        return "-"
    seconds = max(0, time.time() - stamp)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _row(info: EntryInfo) -> str:
    state = info.state + (" (in use)" if info.in_use else "")
    profiles = ",".join(info.manifest.get("profiles") or []) or "-"
    model = info.manifest.get("model") or (info.problem or "-")
    dialect = info.manifest.get("dialect") or "-"
    return (
        f"{info.fingerprint:<16}  {state:<20}  {_human(info.size):>7}  {_age(info.last_used):>9}  "
        f"{dialect:<20}  {profiles:<24}  {model}"
    )


def run(args: argparse.Namespace, cache_dir: str | None) -> int:
    if not cache_dir:
        raise ConfigError(
            "no cache directory is configured",
            key="cache_dir",
            fix="set LAUNCH_CACHE_DIR=/path/to/cache (or --set cache_dir=...)",
        )
    cache = CacheDir(os.path.abspath(cache_dir))
    try:
        return _act(args, cache)
    except CacheError as exc:
        print(f"launch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # sizes and durations given on the command line
        raise ConfigError(str(exc), key="cache prune", fix="sizes like 50G, durations like 7d or 12h") from None


def _act(args: argparse.Namespace, cache: CacheDir) -> int:
    action = args.cache_action
    if action == "list":
        entries = cache.entries()
        if args.json:
            print(json.dumps([e.summary() for e in entries], indent=2, sort_keys=True))
            return 0
        print(f"{'FINGERPRINT':<16}  {'STATE':<20}  {'SIZE':>7}  {'LAST USED':>9}  {'DIALECT':<20}  "
              f"{'PROFILES':<24}  MODEL")  # fmt: skip
        for info in entries:
            print(_row(info))
        return 0
    if action == "show":
        info = cache.read(args.fingerprint)
        print(json.dumps({**info.summary(), "inputs": info.manifest.get("inputs")}, indent=2, sort_keys=True))
        return 0
    if action == "prune":
        removed = cache.prune(
            max_entries=args.max_entries,
            max_bytes=parse_size(args.max_bytes) if args.max_bytes else None,
            older_than=parse_duration(args.older_than) if args.older_than else None,
        )
        for info in removed:
            print(f"removed {info.fingerprint} ({info.state}, {_human(info.size)})")
        print(f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'} removed")
        return 0
    # clear
    if args.fingerprint:
        cache.read(args.fingerprint)  # an unknown fingerprint is an error, not a silent no-op
        cache.remove(args.fingerprint)
        print(f"removed {args.fingerprint}")
        return 0
    busy = []
    for info in cache.entries():
        if info.state == "foreign":
            continue
        try:
            cache.remove(info.fingerprint)
            print(f"removed {info.fingerprint}")
        except CacheError:
            busy.append(info.fingerprint)
    for fp in busy:
        print(f"kept {fp}: in use by a running launcher")
    return 3 if busy else 0
