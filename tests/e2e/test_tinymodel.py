"""The tiny model's recipe: the shape vLLM's CPU build needs, determinism, and the build cache."""

from __future__ import annotations

import json
from pathlib import Path

from launcher import tinymodel


def test_the_model_has_the_shape_cpu_vllm_needs(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] in (32, 64)  # CPU attention: 32, 64, 80, ...; 16 fails on first request
    assert config["max_position_embeddings"] == 4096  # the profiles' max_model_len
    assert config["num_hidden_layers"] == 2
    assert config["hidden_size"] <= 128
    assert config["vocab_size"] == tinymodel.VOCAB_SIZE


def test_the_tokenizer_encodes_decodes_and_renders_chat(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    text = "Hello, wörld! 你好 4096"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text  # byte-level: nothing is lost
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nHi</s>\n<|assistant|>\n"


def test_builds_are_deterministic_cached_and_never_half_done(tmp_path: Path, tiny_model: Path) -> None:
    built = tinymodel.ensure_tiny_model(tmp_path)
    assert built == tmp_path / tinymodel.NAME
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (built / name).read_bytes() == (tiny_model / name).read_bytes(), name

    marker = built / tinymodel.COMPLETE
    stamp = marker.stat().st_mtime_ns
    assert tinymodel.ensure_tiny_model(tmp_path) == built
    assert marker.stat().st_mtime_ns == stamp  # reused, not rebuilt

    # A directory without the completion marker (a build killed before the rename cannot leave one,
    # but a hand-made or damaged copy can) is rebuilt, and no temporary directory is left behind.
    marker.unlink()
    (built / "model.safetensors").write_bytes(b"garbage")
    assert tinymodel.ensure_tiny_model(tmp_path) == built
    assert (built / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [tinymodel.NAME]
