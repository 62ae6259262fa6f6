"""The graph-compile cache directory: one entry per fingerprint, locked, trusted only when complete.

Layout under LAUNCH_CACHE_DIR:
    <fp>/manifest.json   inputs, state (building|complete), created, last_used, size
    <fp>/data/           what vLLM writes (VLLM_CACHE_ROOT, TORCHAIR_CACHE_HOME or the 0.6 cwd)
    .locks/<fp>.use      shared by every launcher using the entry; exclusive only to delete it
    .locks/<fp>.build    exclusive while one launcher compiles into the entry

Locks are flock(2) locks, so a launcher that dies releases them: an entry left `building` whose build
lock is free was abandoned and is rebuilt. Nothing here decides configuration; the planner chose the
fingerprint and where the child writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
DATA = "data"
FORMAT = 1
FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


class CacheError(Exception):
    """A cache operation that cannot be done: unknown entry (exit 2) or entry in use (exit 3)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class EntryInfo:
    fingerprint: str
    path: Path
    state: str  # building | complete | corrupt | foreign
    manifest: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    in_use: bool = False

    @property
    def size(self) -> int:
        value = self.manifest.get("size_bytes")
        return value if isinstance(value, int) else 0

    @property
    def last_used(self) -> float:
        value = self.manifest.get("last_used")
        return float(value) if isinstance(value, (int, float)) else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "state": self.state,
            "in_use": self.in_use,
            "model": self.manifest.get("model"),
            "profiles": self.manifest.get("profiles"),
            "dialect": self.manifest.get("dialect"),
            "size_bytes": self.size,
            "created": self.manifest.get("created"),
            "last_used": self.manifest.get("last_used"),
            "problem": self.problem,
        }


def _now() -> float:
    return time.time()


def tree_size(path: Path) -> int:
    """Bytes of regular files below path, never following symlinks."""
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the old manifest or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


class CacheDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- paths -------------------------------------------------------------------------------------
    def entry(self, fp: str) -> Path:
        if not FINGERPRINT.match(fp):
            raise CacheError(f"{fp!r} is not a cache fingerprint (16 hex digits; see `launch cache list`)")
        return self.root / fp

    def _lock_file(self, fp: str, kind: str) -> Path:
        return self.root / ".locks" / f"{fp}.{kind}"

    def _open_lock(self, fp: str, kind: str) -> int:
        path = self._lock_file(fp, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    # --- reading -------------------------------------------------------------------------------------
    def read(self, fp: str) -> EntryInfo:
        path = self.entry(fp)
        if path.is_symlink() or not path.is_dir():
            raise CacheError(f"no cache entry {fp} in {self.root}")
        return self._info(path)

    def _info(self, path: Path) -> EntryInfo:
        fp = path.name
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            return EntryInfo(fp, path, "foreign", problem="no manifest.json: not written by launch; left alone")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return EntryInfo(fp, path, "corrupt", problem=f"manifest.json unreadable: {exc}")
        if not isinstance(manifest, dict) or manifest.get("fingerprint") != fp:
            return EntryInfo(fp, path, "corrupt", problem="manifest.json does not describe this entry")
        state = manifest.get("state")
        if state not in ("building", "complete"):
            return EntryInfo(fp, path, "corrupt", manifest, problem=f"unknown state {state!r}")
        return EntryInfo(fp, path, str(state), manifest, in_use=self.in_use(fp))

    def entries(self) -> list[EntryInfo]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or path.is_symlink() or not path.is_dir():
                continue
            if not FINGERPRINT.match(path.name):
                found.append(EntryInfo(path.name, path, "foreign", problem="not a cache entry name; left alone"))
                continue
            found.append(self._info(path))
        return found

    def in_use(self, fp: str) -> bool:
        if not self._lock_file(fp, "use").exists():
            return False
        fd = self._open_lock(fp, "use")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases the probe's lock
        return False

    # --- removing ------------------------------------------------------------------------------------
    def remove(self, fp: str) -> None:
        """Delete an entry nobody uses. Refuses entries in use; never follows a symlink out of the root."""
        path = self.entry(fp)
        fd = self._open_lock(fp, "use")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CacheError(f"cache entry {fp} is in use by a running launcher; not removed", 3) from None
            self._delete(path)
        finally:
            os.close(fd)

    def _delete(self, path: Path) -> None:
        if path.is_symlink():
            path.unlink()  # the link goes, what it points to stays
            return
        if not path.exists():
            return
        if path.resolve().parent != self.root.resolve():
            raise CacheError(f"{path} is not inside {self.root}; not removed", 3)
        # Rename first so a half-deleted entry is never mistaken for a usable one.
        doomed = path.with_name(f".deleting-{path.name}-{os.getpid()}")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def prune(
        self,
        *,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        older_than: float | None = None,
        keep: frozenset[str] = frozenset(),
    ) -> list[EntryInfo]:
        """Remove least-recently-used entries beyond the limits; entries in use and `keep` stay."""
        entries = [e for e in self.entries() if e.state in ("complete", "building", "corrupt")]
        entries.sort(key=lambda e: e.last_used, reverse=True)  # newest first
        removed: list[EntryInfo] = []
        kept_count, kept_bytes = 0, 0
        now = _now()
        for info in entries:
            too_old = older_than is not None and info.last_used and now - info.last_used > older_than
            over = (max_entries is not None and kept_count >= max_entries) or (
                max_bytes is not None and kept_bytes + info.size > max_bytes
            )
            abandoned = info.state == "corrupt"
            if (too_old or over or abandoned) and info.fingerprint not in keep:
                try:
                    self.remove(info.fingerprint)
                    removed.append(info)
                    continue
                except CacheError:
                    pass  # in use: it stays, and counts
            kept_count += 1
            kept_bytes += info.size
        return removed

    # --- using -----------------------------------------------------------------------------------------
    def acquire(self, fp: str, manifest: dict[str, Any], *, wait: float, poll: float = 0.2) -> Lease:
        """Take the entry for a start: use it when complete, build it when absent or abandoned, wait
        while another launcher builds it (up to `wait` seconds, then CacheError)."""
        path = self.entry(fp)
        self.root.mkdir(parents=True, exist_ok=True)
        use_fd = self._open_lock(fp, "use")
        fcntl.flock(use_fd, fcntl.LOCK_SH)  # blocks only while an entry is being deleted
        deadline = time.monotonic() + wait
        try:
            while True:
                build_fd = self._open_lock(fp, "build")
                info = self._info(path) if path.is_dir() and not path.is_symlink() else None
                if info is not None and info.state == "complete":
                    os.close(build_fd)
                    lease = Lease(self, fp, path, use_fd, None, "complete", reused=True)
                    lease.touch()
                    return lease
                try:
                    fcntl.flock(build_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(build_fd)
                    if time.monotonic() >= deadline:
                        raise CacheError(f"another launcher is still building cache entry {fp}", 3) from None
                    time.sleep(poll)  # the builder holds the lock until its server is warm
                    continue
                # We may build. Re-read under the lock: a builder may have finished meanwhile.
                info = self._info(path) if path.is_dir() and not path.is_symlink() else None
                if info is not None and info.state == "complete":
                    fcntl.flock(build_fd, fcntl.LOCK_UN)
                    os.close(build_fd)
                    continue
                discarded = info is not None
                if path.exists() or path.is_symlink():
                    self._delete(path)
                lease = Lease(self, fp, path, use_fd, build_fd, "building", reused=False, discarded=discarded)
                lease.start_building(manifest)
                return lease
        except BaseException:
            os.close(use_fd)
            raise


@dataclass
class Lease:
    """A running launcher's hold on one entry; released (fds closed) when the launcher ends."""

    cache: CacheDir
    fingerprint: str
    path: Path
    use_fd: int
    build_fd: int | None
    state: str
    reused: bool
    discarded: bool = False  # an abandoned half-built entry was thrown away

    @property
    def data(self) -> Path:
        return self.path / DATA

    def _manifest(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def start_building(self, manifest: dict[str, Any]) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        now = _now()
        record = {
            **manifest,
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "state": "building",
            "created": now,
            "last_used": now,
            "size_bytes": 0,
            "builder_pid": os.getpid(),
        }
        _write_json(self.path / MANIFEST, record)
        self.state = "building"

    def touch(self) -> None:
        record = self._manifest()
        if record:
            record["last_used"] = _now()
            _write_json(self.path / MANIFEST, record)

    def mark_complete(self) -> None:
        """The server became ready and warm: from now on the entry is trusted."""
        if self.build_fd is None:
            return
        record = self._manifest()
        record.update(state="complete", last_used=_now(), size_bytes=tree_size(self.data))
        record.pop("builder_pid", None)
        _write_json(self.path / MANIFEST, record)
        self.state = "complete"
        fcntl.flock(self.build_fd, fcntl.LOCK_UN)
        os.close(self.build_fd)
        self.build_fd = None

    def rebuild(self, manifest: dict[str, Any]) -> None:
        """Throw the entry's contents away and build again (recovery from a cache-related failure)."""
        if self.build_fd is None:
            fd = self.cache._open_lock(self.fingerprint, "build")
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.build_fd = fd
        self.cache._delete(self.path)
        self.reused = False
        self.start_building(manifest)

    def release(self) -> None:
        for fd in (self.build_fd, self.use_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.build_fd = None
        self.use_fd = -1
