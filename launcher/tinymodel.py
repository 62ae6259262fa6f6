"""A tiny random-weight Llama with a locally trained tokenizer, for the demo and the end-to-end tests.

Models cannot be downloaded where the launcher is developed and tested, so this builds one that vLLM's
CPU build can serve: a real Hugging Face directory (config.json, safetensors weights, a fast tokenizer
with a chat template) that answers /v1/completions and /v1/chat/completions with (meaningless) text.

The shape is chosen for vLLM on CPU, not for quality:
- `head_dim` 32: the CPU attention kernels support 32, 64, 80, ...; 16 starts and then fails with
  HTTP 500 on the first request.
- `max_position_embeddings` 4096: the launcher checks max_model_len <= max_position_embeddings, and
  the built-in profiles use 4096.
- bfloat16 weights: vLLM's CPU platform serves in bfloat16 by default; float32 weights would be
  downcast at load with one warning per tensor in the log.

transformers, tokenizers and torch are imported inside the functions only: the launcher itself must
import (and start in a container) without them.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

# Bump when anything below changes the files produced: the cache directory is named after it, so an
# old build is never reused for a new recipe.
VERSION = 1
NAME = f"tiny-llama-v{VERSION}"
SEED = 1234
VOCAB_SIZE = 1000

BOS = "<s>"
EOS = "</s>"
PAD = "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# A plain template (no `raise_exception`, no tool calls) that every transformers version renders.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# The marker written last inside a finished build; a directory without it is never used.
COMPLETE = ".complete.json"

_CORPUS = """\
The launcher turns a named profile and the container environment into one validated command line.
It prepares the runtime and the compile cache, starts the OpenAI compatible server and supervises it.
A pod stops with SIGTERM; the launcher forwards it, waits for the server to exit and reaps every child.
When the engine dies the server is restarted with a back-off, and the status endpoint says why.
Hello! How are you today? I am fine, thank you. What is the weather like? It is sunny and warm.
Once upon a time there was a small model that knew nothing at all, yet it answered every question.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 16 32 64 128 256 512 1024 2048 4096 8192.
Punctuation and symbols: , . ; : ! ? ' " ( ) [ ] { } < > / \\ | - _ + = * & ^ % $ # @ ~ `
def main(argv: list[str]) -> int: return 0  # code is text too
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Serving large language models needs memory for weights and for the key value cache of every sequence.
Block size, max model length, max number of sequences and batched tokens bound that memory.
"""


def build_tiny_model(out_dir: Path) -> None:
    """Write the model and tokenizer into `out_dir` (created). Deterministic for a given recipe."""
    # import_module, not `import`: the modules are optional (the `cpu` extra), and typing them as Any
    # keeps mypy from following torch and transformers, which costs minutes and says nothing about us.
    torch: Any = importlib.import_module("torch")
    tk: Any = importlib.import_module("tokenizers")
    hf: Any = importlib.import_module("transformers")
    Tokenizer, decoders, models, pre_tokenizers, trainers = (
        tk.Tokenizer,
        tk.decoders,
        tk.models,
        tk.pre_tokenizers,
        tk.trainers,
    )

    hf.utils.logging.disable_progress_bar()  # a bar for one 1 MB shard is noise in test and demo output

    out_dir.mkdir(parents=True, exist_ok=True)

    # Byte-level BPE: every byte has a token, so any prompt encodes and any output decodes.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)

    fast: Any = hf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out_dir))

    config: Any = hf.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )

    torch.manual_seed(SEED)
    model: Any = hf.LlamaForCausalLM(config)
    # save_pretrained records the weights' dtype in config.json (`dtype`, or `torch_dtype` before 5.0).
    model.to(torch.bfloat16)
    model.save_pretrained(str(out_dir), safe_serialization=True)


def _corpus() -> list[str]:
    """The built-in text plus made-up words: the real text alone has too few distinct pairs to reach
    VOCAB_SIZE merges. A seeded generator keeps it identical on every machine."""
    rng = random.Random(SEED)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    made_up = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return _CORPUS.splitlines() * 4 + made_up


def _is_complete(path: Path) -> bool:
    marker = path / COMPLETE
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return bool(info.get("version") == VERSION and (path / "config.json").is_file())


def ensure_tiny_model(cache_root: Path | str) -> Path:
    """The tiny model's directory under `cache_root`, built on first use and reused afterwards.

    The build happens in a temporary sibling directory that is renamed into place when complete, so a
    killed build is never mistaken for a model, and concurrent callers each end up with a whole one.
    """
    root = Path(cache_root).expanduser()
    final = root / NAME
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=root))
    try:
        build_tiny_model(tmp)
        (tmp / COMPLETE).write_text(
            json.dumps({"version": VERSION, "seconds": round(time.monotonic() - started, 2)}) + "\n"
        )
        # mkdtemp makes the directory private and transformers may write 0600 files; the demo's model
        # is read by whichever user the container runs vLLM as.
        for path in [tmp, *tmp.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        if final.exists() and not _is_complete(final):
            # Left by an older recipe without the marker, or damaged by hand: replace it.
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process renamed its own complete build first (the target is a non-empty dir).
            if not _is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    """`python -m launcher.tinymodel [CACHE_ROOT]`: build (or find) the model and print its path."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path("~/.cache/launch/demo").expanduser()
    started = time.monotonic()
    path = ensure_tiny_model(root)
    print(f"{path}  ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
