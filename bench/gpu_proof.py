"""GPU proof in one command: tune's CUDA paths measured against Trainer + PEFT on one lent GPU.

    python bench/gpu_proof.py --out DIR [--budget-s 480] [--bundle FILE.tar.gz]
    python bench/gpu_proof.py --dry-run --out DIR     # CPU: tiny shapes, 2 steps (CI)
    python bench/gpu_proof.py --plan                  # the planned seconds per item, no runs

GPU time is rare and short (15 minutes a session, the machine starts bare), so everything is
decided here and one call spends its time measuring. The environment is checked first; then
the items run in order, each with its own share of the budget (a run that would not fit in
what is left of its item is recorded as not run; unused time passes to the next item):

  1. throughput: a random-init Llama-3.2-1B-shaped model (config in code), bf16, LoRA r16
     all-linear, alpaca rows up to 2,048 tokens: Trainer + PEFT (padded, SDPA), tune padded,
     tune packed; tokens/s of real tokens, peak CUDA memory, MFU, step-1 loss agreement; then
     tune with the Liger adapter and with `[train] compile = true`.
  2. longest sequence: the longest single sequence that trains one step (LoRA + gradient
     checkpointing + tune's chunked loss), tune (defaults, and with `[train] tiled_mlp`) vs
     Trainer + PEFT, by doubling then bisection.
  3. QLoRA nf4 (when bitsandbytes imports): tokens/s and memory vs Trainer + PEFT.
  4. beacon: memory and time of one training step at 16K and 64K tokens vs SDPA full attention.
  5. the `gpu`-marked tests whose plugins are installed (`pytest -m gpu -x`).

Each item writes DIR/<item>.json and DIR/<item>.md after every run it finishes, so a cut-off
call keeps what it measured; `--bundle` also packs DIR into one archive after every item (the
lent machine returns at most 8 files). An item's failure is recorded, never fatal.

tune is driven through its public surface only: `python -m tune run` (summary.json and
metrics.jsonl) and the `tune.testing` helpers. Every side runs in its own process (the
longest-sequence and beacon probes run one after another inside one process per side, with
the CUDA allocator emptied and its peaks reset before each). bench/gpu_proof.md says how to run
it on the lent machine, what to carry, and how the planned times were estimated.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The alpaca demo rows: carried beside the wheels to the lent machine (bench/gpu_wheels.sh puts
# them there), or the workspace's shared copy. A fresh clone has neither: synthetic rows then.
CARRIED_DATA = REPO / ".whl" / "data" / "alpaca_en_demo.json"
SHARED_DATA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
H100_DENSE_BF16_FLOPS = 989e12  # H100 SXM datasheet, dense bf16 (no sparsity)
LR = 2e-4
LORA = {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# meta-llama/Llama-3.2-1B's public config.json, built in code with random weights: nothing is
# downloaded, and the shapes (hence the FLOPs and the memory) are the real model's.
LLAMA_32_1B: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "initializer_range": 0.02,
}
# The dry run's model: the same architecture, tiny (intermediate a multiple of 64 for the
# bitsandbytes CPU kernels); vocab_size comes from the tokenizer.
TINY_LLAMA: dict[str, Any] = {
    **LLAMA_32_1B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": None,
    "max_position_embeddings": 1024,
    "rope_scaling": None,  # llama3 scaling assumes 8,192 original positions
}


@dataclass(frozen=True)
class Profile:
    """Shapes and counts of one kind of proof: the GPU plan or the CPU dry run."""

    name: str
    model: dict[str, Any]
    tokenizer_vocab: int
    synthetic_rows: int
    seq: int  # max_seq_len of items 1 and 3
    padded_micro: int  # examples per padded micro-batch
    packed_micro: int  # rows of `seq` tokens per packed micro-batch
    warmup: int  # steps not timed
    steps: int  # steps in all
    longest_start: int
    longest_grid: int
    beacon_lengths: tuple[int, ...]
    beacon_window: int
    beacon_ratio: int
    # planned seconds of the set-up and of each run the items make; the item shares of the
    # budget follow them
    plan: dict[str, float] = field(default_factory=dict)
    # runs made only with time left over (not in the shares): their expected seconds
    extra: dict[str, float] = field(default_factory=dict)


GPU = Profile(
    name="gpu",
    model=LLAMA_32_1B,
    tokenizer_vocab=32000,
    synthetic_rows=999,
    seq=2048,
    padded_micro=16,
    packed_micro=4,
    warmup=3,
    steps=18,
    longest_start=16384,
    longest_grid=4096,
    beacon_lengths=(16384, 65536),
    beacon_window=1024,
    beacon_ratio=8,
    plan={
        "setup": 30,
        "Trainer + PEFT padded": 20,
        "tune padded": 20,
        "tune packed": 20,
        "tune packed + Liger": 25,
        "tune packed + compile": 75,
        "longest: tune": 50,
        "longest: tune + tiled MLP": 50,
        "longest: Trainer + PEFT": 35,
        "Trainer + PEFT QLoRA padded": 22,
        "tune QLoRA padded": 22,
        "beacon": 60,
        "gpu tests": 30,
    },
    extra={"Trainer + PEFT padded + Liger": 20, "tune padded + compile": 75},
)
DRY = Profile(
    name="dry-run",
    model=TINY_LLAMA,
    tokenizer_vocab=1000,
    synthetic_rows=160,
    seq=256,
    padded_micro=4,
    packed_micro=2,
    warmup=1,
    steps=2,
    longest_start=256,
    longest_grid=128,
    beacon_lengths=(512, 1024),
    beacon_window=128,
    beacon_ratio=8,
    plan={
        "setup": 12,
        "Trainer + PEFT padded": 10,
        "tune padded": 8,
        "tune packed": 8,
        "longest: tune": 12,
        "longest: tune + tiled MLP": 12,
        "longest: Trainer + PEFT": 10,
        "Trainer + PEFT QLoRA padded": 11,
        "tune QLoRA padded": 9,
        "beacon": 14,
        "gpu tests": 10,
    },
    # with time to spare: one compile run (CPU Inductor, ~15 s), and on a GPU the Liger runs
    extra={
        "tune packed + compile": 20,
        "tune packed + Liger": 10,
        "Trainer + PEFT padded + Liger": 10,
    },
)


@dataclass(frozen=True)
class Case:
    """One side of a throughput comparison (items 1 and 3)."""

    name: str
    side: str  # "tune" | "trainer"
    pack: bool = False
    compile: bool = False
    liger: bool = False
    qlora: bool = False
    reference: str | None = None  # the case whose step-1 loss this one must match (same rows)


THROUGHPUT_CASES = [  # in order of priority: the item's time share cuts the tail
    Case("Trainer + PEFT padded", "trainer"),
    Case("tune padded", "tune", reference="Trainer + PEFT padded"),
    Case("tune packed", "tune", pack=True),
    Case("tune packed + Liger", "tune", pack=True, liger=True, reference="tune packed"),
    Case("tune packed + compile", "tune", pack=True, compile=True, reference="tune packed"),
    Case("Trainer + PEFT padded + Liger", "trainer", liger=True, reference="Trainer + PEFT padded"),
    Case("tune padded + compile", "tune", compile=True, reference="tune padded"),
]
QLORA_CASES = [
    Case("Trainer + PEFT QLoRA padded", "trainer", qlora=True),
    Case("tune QLoRA padded", "tune", qlora=True, reference="Trainer + PEFT QLoRA padded"),
]
# item key -> (title, the plan entries it spends)
ITEMS: dict[str, tuple[str, list[str]]] = {
    "1-throughput": ("Throughput: tune vs Trainer + PEFT", [c.name for c in THROUGHPUT_CASES]),
    "2-longest-sequence": (
        "Longest sequence",
        ["longest: tune", "longest: tune + tiled MLP", "longest: Trainer + PEFT"],
    ),
    "3-qlora": ("QLoRA nf4: tune vs Trainer + PEFT", [c.name for c in QLORA_CASES]),
    "4-beacon": ("Activation Beacon vs SDPA full attention", ["beacon"]),
    "5-gpu-tests": ("gpu-marked tests", ["gpu tests"]),
}
RESERVE = 0.03  # of the budget, kept for writing the results


# -- small helpers ---------------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    """Write through a temp file and rename, so a kill never leaves half a JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def gib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def fmt(value: Any, spec: str = "") -> str:
    """A table cell: '-' for missing values."""
    if value is None or value == "":
        return "-"
    return format(value, spec) if spec else str(value)


def importable(module: str) -> bool:
    """Whether `module` can be found here (a broken package counts as missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_oom(text: str) -> bool:
    return "out of memory" in text.lower() or "OutOfMemoryError" in text


def failure_reason(log: Path) -> str:
    """The line of a failed run's log that says why: its last error line, else its last line."""
    if not log.exists():
        return "no log"
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if is_oom(line):
            return "out of memory: " + line[-300:]
    for line in reversed(lines):
        if "Error" in line or line.startswith("error:"):
            return line[-300:]
    return lines[-1][-300:] if lines else "empty log"


def log_tail(log: Path, chars: int = 2500) -> str:
    """The end of a failed run's log, kept in the JSON: the lent machine's files are gone."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def own_group_dying_with_parent() -> None:
    """In a child before exec: its own process group (so a timeout kills its helpers too), and
    SIGKILL when this script dies (Linux), so a run cut off from outside leaves no orphan on
    the GPU."""
    os.setpgrp()
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_process(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd` in its own process group, output to `log`; past `timeout` s the group is
    killed (tune's SIGTERM handler would finish the step and checkpoint first), so a stuck run
    never eats the next item's time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            preexec_fn=own_group_dying_with_parent,  # the parent has no threads
        )
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, no other
            proc.wait()
    return {
        "rc": proc.returncode,
        "seconds": round(time.monotonic() - start, 2),
        "timed_out": timed_out,
    }


# -- environment (child) ---------------------------------------------------------------------------
OPTIONAL_MODULES = {
    "liger_kernel": "Liger adapter (item 1)",
    "bitsandbytes": "QLoRA (item 3)",
    "triton": "Liger's kernels, torch.compile on CUDA",
    "flash_attn": "not used: packing goes through SDPA's block-diagonal mask",
    "deepspeed": "not used here",
    "unsloth": "not used here",
    "pytest_timeout": "per-test timeout of item 5",
}


def probe_environment() -> dict[str, Any]:
    """CUDA, the GPU, library versions, which optional wheels import, tune's plugins."""
    import importlib.metadata as metadata
    import platform

    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "versions": {
            d: version(d)
            for d in (
                "torch",
                "transformers",
                "peft",
                "accelerate",
                "tune",
                "pydantic",
                "pluggy",
                "click",
                "rich",
                "pyarrow",
                "matplotlib",
                "safetensors",
                "tokenizers",
                "triton",
            )
        },
        "optional": {name: importable(name) for name in OPTIONAL_MODULES},
        "tune_plugins": sorted(
            {ep.name: ep.value for ep in metadata.entry_points(group="tune")}.items()
        ),
    }
    if env["cuda"]:
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "bf16": torch.cuda.is_bf16_supported(),
        }
        for name in ("liger_kernel", "bitsandbytes"):
            env["versions"][name] = version(name.replace("_", "-")) or version(name)
    else:
        env["versions"]["bitsandbytes"] = version("bitsandbytes")
    return env


# -- data, tokenizer, model (child) ----------------------------------------------------------------
# Word-count profile of alpaca_en_demo.json (999 rows): log-normal fits (mu, sigma of ln words),
# the share of empty inputs and the longest output. Synthetic rows follow it when the file is
# not here (a fresh clone), so padded batches and packed bins see alpaca-like lengths.
ALPACA_WORDS = {
    "instruction": (2.253, 0.353),
    "input": (1.861, 0.985),
    "output": (4.037, 1.405),
}
ALPACA_EMPTY_INPUT = 0.588
ALPACA_MAX_OUTPUT_WORDS = 429


def synthetic_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-format rows of pseudo-English (a Zipf-weighted lexicon of syllable words) with
    alpaca_en_demo's word-count profile; deterministic in `seed`."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "w", "st", "th"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng"]
    lexicon: list[str] = []
    seen: set[str] = set()
    while len(lexicon) < 6000:
        syllables = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        word = "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            lexicon.append(word)
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]

    def text(mu: float, sigma: float, cap: int) -> str:
        n = max(1, min(cap, round(rng.lognormvariate(mu, sigma))))
        words = rng.choices(lexicon, weights=weights, k=n)
        out, sentence = [], 0
        for word in words:
            out.append(word.capitalize() if sentence == 0 else word)
            sentence += 1
            if sentence >= rng.randint(8, 20):
                out[-1] += "."
                sentence = 0
        return " ".join(out) + ("" if out[-1].endswith(".") else ".")

    rows = []
    for _ in range(count):
        empty = rng.random() < ALPACA_EMPTY_INPUT
        rows.append(
            {
                "instruction": text(*ALPACA_WORDS["instruction"], 80),
                "input": "" if empty else text(*ALPACA_WORDS["input"], 130),
                "output": text(*ALPACA_WORDS["output"], ALPACA_MAX_OUTPUT_WORDS),
            }
        )
    return rows


def load_rows(choice: str, count: int) -> tuple[list[dict[str, str]], str]:
    """(rows, where they came from): --data PATH, the carried or shared alpaca demo, or
    synthetic rows with its length profile."""
    if choice == "synthetic":
        return synthetic_rows(count), f"synthetic: {count} rows with alpaca_en_demo's lengths"
    paths = [Path(choice)] if choice != "auto" else [CARRIED_DATA, SHARED_DATA]
    for path in paths:
        if path.exists():
            rows = json.loads(path.read_text(encoding="utf-8"))
            return rows, f"{path.name}: {len(rows)} rows ({path})"
    if choice != "auto":
        raise SystemExit(f"--data {choice}: no such file")
    return synthetic_rows(count), (
        f"synthetic: {count} rows with alpaca_en_demo's lengths (no {CARRIED_DATA.name} here)"
    )


def row_text(row: dict[str, str]) -> str:
    return "\n".join(x for x in (row["instruction"], row.get("input", ""), row["output"]) if x)


def build_tokenizer(texts: list[str], vocab: int, max_len: int):
    """A byte-level BPE trained on the rows (Llama-3's tokenizer cannot be downloaded), so
    examples have realistic token lengths; chatml's special tokens for the alpaca template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        model_max_length=max_len,
    )


def long_document(rows: list[dict[str, str]], tokenizer, tokens: int) -> str:
    """One document of at least `tokens` tokens: the rows' texts end to end, repeated."""
    texts = [row_text(r) for r in rows]
    sample = "\n\n".join(texts[:50])
    per_char = len(tokenizer(sample)["input_ids"]) / max(len(sample), 1)
    parts: list[str] = []
    chars, target = 0, int(1.15 * tokens / per_char)
    while chars < target:
        for text in texts:
            parts.append(text)
            chars += len(text) + 2
            if chars >= target:
                break
    doc = "\n\n".join(parts)
    while len(tokenizer(doc)["input_ids"]) < tokens:
        doc = doc + "\n\n" + doc
    return doc


def child_setup(spec: dict[str, Any]) -> None:
    """The environment first (written at once), then the rows, tokenizer, model and the long
    document every item shares, and the tokenized examples' length statistics."""
    result = Path(spec["result"])
    env = probe_environment()
    write_json(result, {"environment": env})
    if not spec["build"] or (spec["profile"] == "gpu" and not env["cuda"]):
        return  # only item 5 asked for, or a 1B model on a machine that cannot train it
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    profile = GPU if spec["profile"] == "gpu" else DRY
    work = Path(spec["work"])
    started = time.monotonic()
    rows, source = load_rows(spec["data"], profile.synthetic_rows)
    write_json(Path(spec["rows_file"]), rows)
    longest_needed = max(profile.model["max_position_embeddings"], max(profile.beacon_lengths))
    tokenizer = build_tokenizer(
        [row_text(r) for r in rows],
        profile.tokenizer_vocab,
        profile.model["max_position_embeddings"],
    )
    model_dir = Path(spec["model_dir"])
    config = dict(profile.model)
    if config["vocab_size"] is None:
        config["vocab_size"] = -(-len(tokenizer) // 64) * 64
    llama = LlamaConfig(
        **config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dtype = torch.bfloat16 if env["cuda"] else torch.float32
    torch.manual_seed(0)
    with torch.device("cuda" if env["cuda"] else "cpu"):
        model = LlamaForCausalLM(llama)
    model.to(dtype).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    del model
    doc = long_document(rows, tokenizer, longest_needed)
    Path(spec["doc_file"]).write_text(json.dumps({"text": doc}) + "\n", encoding="utf-8")
    from tune.testing import load_recipe, tokenize

    examples = tokenize(load_recipe(Path(spec["recipe"]))).train  # also fills tune's cache
    lengths = [len(e["input_ids"]) for e in examples]
    write_json(
        result,
        {
            "environment": env,
            "setup": {
                "data": source,
                "rows": len(rows),
                "examples": len(lengths),
                "tokens": sum(lengths),
                "mean_len": round(sum(lengths) / max(len(lengths), 1), 1),
                "max_len": max(lengths, default=0),
                # attention FLOPs per token need E[len^2] / E[len]
                "len_sq_over_len": sum(n * n for n in lengths) / max(sum(lengths), 1),
                "tokenizer_vocab": len(tokenizer),
                "model_config": config,
                "parameters": params,
                "model_dtype": str(dtype).removeprefix("torch."),
                "work": str(work),
                "seconds": round(time.monotonic() - started, 1),
            },
        },
    )


# -- Trainer + PEFT (child) ------------------------------------------------------------------------
def cuda_peaks() -> dict[str, Any]:
    import torch

    return {
        "kind": "cuda_max_reserved",
        "bytes": torch.cuda.max_memory_reserved(),
        "allocated_bytes": torch.cuda.max_memory_allocated(),
    }


def rss_peak() -> dict[str, Any]:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return {
        "kind": "process_peak_rss",
        "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
    }


def reset_cuda() -> None:
    """Free what earlier probes left and reset the peaks, so the next peak is its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def trainer_model(model_dir: str, cuda: bool, qlora: bool = False, checkpointing: bool = False):
    """The base model loaded as a Trainer + PEFT user would, with the same LoRA as tune's."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if cuda else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        if cuda:
            kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["targets"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if checkpointing:
        model.enable_input_require_grads()
    return model


def trainer_args(output_dir: Path, cuda: bool, micro: int, steps: int, **extra: Any):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=cuda,
        use_cpu=not cuda,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=42,
        **extra,
    )


def sequential_trainer(**kwargs: Any):
    """Trainer reading the rows in order (tune's `shuffle = false` order), so both sides train
    on the same examples step for step."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class InOrder(Trainer):
        def _get_train_sampler(self, *args: Any, **kw: Any):
            return SequentialSampler(self.train_dataset)

    return InOrder(**kwargs)


def step_stamps(cuda: bool):
    """A TrainerCallback recording synchronized train-start and step-end times and the logged
    losses (built here: transformers is imported in the children only)."""
    from transformers import TrainerCallback

    def now() -> float:
        if cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    class Stamps(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.times.append(now())

        def on_step_end(self, args, state, control, **kw):
            self.times.append(now())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Stamps()


def child_trainer(spec: dict[str, Any]) -> None:
    """One Trainer + PEFT run on the examples tune tokenized for the same recipe."""
    import torch
    from transformers import DataCollatorForSeq2Seq
    from tune.testing import load_recipe, tokenize

    cuda = torch.cuda.is_available()
    recipe = load_recipe(Path(spec["recipe"]))
    micro, steps, warmup = spec["micro"], spec["steps"], spec["warmup"]
    examples = tokenize(recipe).train
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    rows = (rows * (1 + (steps * micro) // max(len(rows), 1)))[: steps * micro]
    model = trainer_model(spec["model_dir"], cuda, qlora=spec.get("qlora", False))
    from transformers import AutoTokenizer

    pad = DataCollatorForSeq2Seq(
        AutoTokenizer.from_pretrained(spec["model_dir"]), padding=True, label_pad_token_id=-100
    )
    real_tokens: list[int] = []

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        real_tokens.append(sum(len(r["input_ids"]) for r in batch))  # in batch order
        return pad(batch)

    stamps = step_stamps(cuda)
    args = trainer_args(
        Path(spec["work"]) / "trainer",
        cuda,
        micro,
        steps,
        use_liger_kernel=spec.get("liger", False),
    )
    trainer = sequential_trainer(
        model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[stamps]
    )
    reset_cuda()
    trainer.train()
    memory = cuda_peaks() if cuda else rss_peak()
    step_s = [b - a for a, b in zip(stamps.times, stamps.times[1:], strict=False)]
    timed_tokens, timed_s = real_tokens[warmup:steps], step_s[warmup:]
    write_json(
        Path(spec["result"]),
        {
            "steps": len(step_s),
            "tokens_per_step": real_tokens[:steps],
            "step_s": [round(s, 4) for s in step_s],
            "first_step_s": round(step_s[0], 3) if step_s else None,
            "tokens_per_s": round(sum(timed_tokens) / max(sum(timed_s), 1e-9), 1),
            "peak_memory": memory,
            "losses": stamps.losses,
        },
    )


# -- tune runs -------------------------------------------------------------------------------------
def tune_measurements(run_dir: Path, warmup: int) -> dict[str, Any]:
    """Steady tokens/s from metrics.jsonl (per-step rate x the step's duration, steps after
    `warmup`), peak memory and losses from summary.json."""
    summary = read_json(run_dir / "summary.json")
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    train = [r for r in records if r.get("kind") == "train"]
    times = [r["time"] for r in train]
    step_s = [b - a for a, b in zip(times, times[1:], strict=False)]  # steps 2..N
    timed = list(zip(train[1:], step_s, strict=False))[max(warmup - 1, 0) :]
    tokens = sum(r["tokens_per_s"] * dt for r, dt in timed)
    seconds = sum(dt for _, dt in timed)
    return {
        "steps": summary.get("steps"),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "step_s": [round(s, 4) for s in step_s],
        "run_tokens_per_s": summary.get("tokens_per_s"),
        "token_efficiency": summary.get("token_efficiency"),
        "peak_memory": summary.get("peak_memory"),
        "losses": [r["loss"] for r in train],
        "wall_s": summary.get("wall_s"),
    }


def in_process_tune_run(recipe: dict[str, Any], folder: Path, cuda: bool) -> dict[str, Any]:
    """One `tune.testing.run` in this process: its summary, with the allocator's own peak."""
    from tune.testing import run, write_recipe

    folder.mkdir(parents=True, exist_ok=True)
    path = write_recipe(folder, recipe)
    reset_cuda()
    start = time.monotonic()
    summary, _ = run(path, overwrite=True)
    out = {
        "wall_s": summary.get("wall_s"),
        "run_s": round(time.monotonic() - start, 2),
        "tokens_trained": summary.get("tokens"),
        "peak_memory": cuda_peaks() if cuda else None,
        "tune_peak_memory": summary.get("peak_memory"),
        "first_loss": summary.get("first_loss"),
    }
    return out


def import_heavy_libraries() -> None:
    """Import what every in-process run needs before the first one, so a probe's time (and
    the next probe's predicted time) is its own work, not the process's start-up."""
    import importlib

    import matplotlib

    matplotlib.use("Agg")  # tune's loss plot
    for name in ("matplotlib.pyplot", "peft", "tune.testing"):
        importlib.import_module(name)
    transformers = importlib.import_module("transformers")
    for lazy in ("AutoModelForCausalLM", "Trainer"):  # transformers imports these on access
        getattr(transformers, lazy)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


# -- longest sequence (child) ----------------------------------------------------------------------
def next_length(ok: int | None, failed: int | None, grid: int, cap: int, last: int) -> int | None:
    """Doubling until the first failure, then bisection on the grid; None when bracketed."""
    if failed is None:
        return None if ok is not None and ok >= cap else min(cap, 2 * last)
    low = ok or 0
    if failed - low <= grid:
        return None
    middle = (low + failed) // 2 // grid * grid
    return middle if low < middle < failed else None


def child_longest(spec: dict[str, Any]) -> None:
    """Probe lengths for one side in this process; every probe is appended to the result file
    at once, so a kill keeps the probes done. Stops before a probe predicted (quadratic in
    length from the last success) to outlast the deadline."""
    import torch

    cuda = torch.cuda.is_available()
    import_heavy_libraries()
    side, grid, cap = spec["side"], spec["grid"], spec["cap"]
    result = Path(spec["result"])
    work = Path(spec["work"])
    probes: list[dict[str, Any]] = []
    model = None
    if side == "trainer":
        model = trainer_model(spec["model_dir"], cuda, checkpointing=True)
    length: int | None = spec["start"]
    ok: int | None = None
    failed: int | None = None
    last_ok: dict[str, Any] | None = None
    stop, limit = "bracketed between a success and an out-of-memory", "memory"
    while length is not None:
        if last_ok is not None:
            scale = (length / last_ok["tokens"]) ** 2
            predicted = last_ok["overhead_s"] + last_ok["step_s"] * scale
            if time.time() + predicted > spec["deadline"]:
                stop = f"time share: a probe at {length:,} tokens would take ~{predicted:.0f} s"
                limit = "time"
                break
        recipe = copy.deepcopy(spec["recipe"])
        recipe["model"]["max_seq_len"] = length
        recipe["train"]["output_dir"] = str(work / f"{side}-{length}" / "run")
        started = time.monotonic()
        try:
            if side == "tune":
                measured = in_process_tune_run(recipe, work / f"{side}-{length}", cuda)
                step = measured["wall_s"]
            else:
                measured = trainer_probe(model, recipe, work / f"{side}-{length}", cuda)
                step = measured["step_s"]
            probe = {"tokens": length, "ok": True, "step_s": step, **measured}
        except Exception as exc:  # an OOM is the answer; anything else ends the search
            probe = {"tokens": length, "ok": False, "error": error_text(exc)}
            if not is_oom(probe["error"]):
                probe["traceback"] = traceback.format_exc()[-2500:]
        probe["probe_s"] = round(time.monotonic() - started, 2)
        if model is not None:
            model.zero_grad(set_to_none=True)
        reset_cuda()
        probes.append(probe)
        write_json(result, {"probes": probes, "stop": None, "limit": None})
        if probe["ok"]:
            ok = length
            probe["overhead_s"] = max(probe["probe_s"] - (probe["step_s"] or 0.0), 0.0)
            last_ok = probe
        elif is_oom(probe["error"]):
            failed = length
        else:
            stop, limit = "error: " + probe["error"], "error"
            break
        length = next_length(ok, failed, grid, cap, length)
        if length is None and failed is None:
            stop, limit = f"the model's {cap:,} positions", "positions"
    write_json(result, {"probes": probes, "stop": stop, "limit": limit})


def trainer_probe(model, recipe: dict[str, Any], folder: Path, cuda: bool) -> dict[str, Any]:
    """One Trainer + PEFT step on tune's tokens for this length (gradient checkpointing)."""
    from tune.testing import load_recipe, tokenize, write_recipe

    folder.mkdir(parents=True, exist_ok=True)
    example = tokenize(load_recipe(write_recipe(folder, recipe))).train[0]
    rows = [{"input_ids": example["input_ids"], "labels": example["labels"]}]
    stamps = step_stamps(cuda)
    args = trainer_args(
        folder / "trainer",
        cuda,
        1,
        1,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        return {k: torch.tensor([r[k] for r in batch]) for k in ("input_ids", "labels")}

    trainer = sequential_trainer(
        model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[stamps]
    )
    reset_cuda()
    try:
        trainer.train()
    finally:
        trainer.optimizer = None
        del trainer
    steps = [b - a for a, b in zip(stamps.times, stamps.times[1:], strict=False)]
    return {
        "step_s": round(steps[-1], 3) if steps else None,
        "peak_memory": cuda_peaks() if cuda else None,
        "first_loss": stamps.losses[0] if stamps.losses else None,
    }


# -- beacon (child) --------------------------------------------------------------------------------
def child_beacon(spec: dict[str, Any]) -> None:
    """Each configuration as one tune run in this process; on CUDA a short warm-up run first,
    so the first configuration's step is not charged with CUDA's start-up."""
    import torch

    cuda = torch.cuda.is_available()
    import_heavy_libraries()
    work, result = Path(spec["work"]), Path(spec["result"])
    rows: list[dict[str, Any]] = []
    if cuda and spec.get("warmup"):
        in_process_tune_run(spec["warmup"], work / "warmup", cuda)
    for config in spec["configs"]:
        started = time.monotonic()
        try:
            measured = in_process_tune_run(config["recipe"], work / config["name"], cuda)
            row = {"ok": True, **measured}
        except Exception as exc:
            row = {
                "ok": False,
                "error": error_text(exc),
                "traceback": traceback.format_exc()[-2500:],
            }
        reset_cuda()
        row.update(
            name=config["name"],
            mode=config["mode"],
            tokens=config["tokens"],
            checkpointing=config["checkpointing"],
            probe_s=round(time.monotonic() - started, 2),
        )
        rows.append(row)
        write_json(result, {"rows": rows})
    write_json(result, {"rows": rows, "done": True})


CHILDREN: dict[str, Callable[[dict[str, Any]], None]] = {
    "setup": child_setup,
    "trainer": child_trainer,
    "longest": child_longest,
    "beacon": child_beacon,
}


# -- the orchestration (parent; never touches CUDA) ------------------------------------------------
class ItemReport:
    """One item's JSON and Markdown, rewritten after every run so a cut-off call keeps them."""

    def __init__(self, proof: Proof, key: str, deadline: float, planned_s: float) -> None:
        self.proof, self.key = proof, key
        self.deadline = deadline
        self.started = time.monotonic()
        self.data: dict[str, Any] = {
            "item": key,
            "title": ITEMS[key][0] if key in ITEMS else key,
            "status": "running",
            "reason": None,
            "profile": proof.profile.name,
            "planned_s": planned_s,
            "cap_s": round(deadline - self.started, 1),
            "seconds": 0.0,
            "results": [],
            "notes": [],
        }

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, result: dict[str, Any]) -> None:
        self.data["results"].append(result)
        self.save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)

    def skip(self, reason: str) -> None:
        self.data.update(status="skipped", reason=reason)
        self.save()

    def finish(self) -> None:
        """The item's status from its runs: a run that cannot happen here (skipped) does not
        make the item partial; one that failed, timed out or found no time does."""
        results = self.data["results"]
        if self.data["status"] == "running":
            states = {r.get("status") for r in results} - {"skipped"}
            if not results:
                self.data.update(status="failed", reason=self.data["reason"] or "nothing ran")
            elif not states:
                self.data["status"] = "skipped"
            elif states == {"ok"}:
                self.data["status"] = "ok"
            elif "ok" in states:
                self.data["status"] = "partial"
            elif states <= {"not run", "timeout"}:  # out of time, not broken
                self.data["status"] = "not run"
            else:
                self.data["status"] = "failed"
            if self.data["status"] != "ok" and not self.data["reason"]:
                self.data["reason"] = "; ".join(
                    f"{r.get('case') or r.get('name') or r.get('side')}: {r['status']} "
                    f"({r.get('reason')})"
                    for r in results
                    if r.get("status") != "ok"
                )
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.started, 1)
        out = self.proof.out
        write_json(out / f"{self.key}.json", self.data)
        (out / f"{self.key}.md").write_text(render_item(self.data), encoding="utf-8")


class Proof:
    """The run as a whole: arguments, profile, paths, the clock and what setup built."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = DRY if args.dry_run else GPU
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve() if args.work else self.out.parent / "gpu-proof-work"
        self.budget = args.budget_s or (170.0 if args.dry_run else 480.0)
        self.start = time.monotonic()
        self.end = self.start + self.budget * (1 - RESERVE)
        self.env: dict[str, Any] = {}
        self.setup: dict[str, Any] = {}
        self.pace: list[float] = []  # seconds taken / planned, per finished run
        self.model_dir = self.work / "model"
        self.rows_file = self.work / "rows.json"
        self.doc_file = self.work / "document.jsonl"
        self.items = [k for k in ITEMS if k[0] in set(args.items.split(","))]
        self.child_env = {
            **os.environ,
            "TUNE_CACHE": str(self.work / "cache"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
        }

    @property
    def cuda(self) -> bool:
        return bool(self.env.get("cuda"))

    def observed(self, planned: float, seconds: float) -> None:
        """Record how long a planned run took: later runs are judged at this pace."""
        if planned > 0 and seconds > 0:
            self.pace.append(seconds / planned)

    def expected(self, planned: float) -> float:
        """A run's planned seconds at the pace seen so far (the median ratio, 1x to 4x): a
        loaded or slower machine does not start runs that cannot finish in time."""
        if not self.pace:
            return planned
        ratios = sorted(self.pace)
        return planned * min(max(ratios[len(ratios) // 2], 1.0), 4.0)

    @property
    def precision(self) -> str:
        return "bf16" if self.cuda else "fp32"

    def planned(self, names: list[str]) -> float:
        return sum(self.profile.plan.get(n, 0.0) for n in names)

    def deadlines(self) -> dict[str, tuple[float, float]]:
        """Each item's (planned s, absolute deadline): the budget split in proportion to the
        plan, deadlines cumulative, so time an item leaves unused passes to the next ones."""
        plans = {k: self.planned(ITEMS[k][1]) for k in self.items}
        total = self.profile.plan["setup"] + sum(plans.values())
        scale = (self.end - self.start) / max(total, 1e-9)
        at = self.start + self.profile.plan["setup"] * scale
        out = {}
        for key in self.items:
            at += plans[key] * scale
            out[key] = (plans[key], min(at, self.end))
        return out

    def child(self, role: str, spec: dict[str, Any], folder: Path, timeout: float):
        """Run `--child role` with `spec`; returns (process outcome, its result JSON or None)."""
        folder.mkdir(parents=True, exist_ok=True)
        spec = {**spec, "result": str(folder / f"{role}-result.json")}
        spec_file = folder / f"{role}-spec.json"
        write_json(spec_file, spec)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, str(spec_file)]
        outcome = run_process(cmd, folder / f"{role}.log", timeout, self.child_env)
        result = Path(spec["result"])
        return outcome, (read_json(result) if result.exists() else None)

    def bundle(self) -> None:
        """Pack the results folder into --bundle (renamed into place: never half written)."""
        if not self.args.bundle:
            return
        target = Path(self.args.bundle)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.out, arcname=self.out.name)
        tmp.replace(target)


# -- recipes ---------------------------------------------------------------------------------------
def base_recipe(proof: Proof, folder: Path, max_seq_len: int) -> dict[str, Any]:
    return {
        "model": {
            "path": str(proof.model_dir),
            "max_seq_len": max_seq_len,
            "dtype": "bfloat16" if proof.cuda else "float32",
            "attn_implementation": "sdpa",
        },
        "adapt": [dict(LORA)],
        "optimizer": {"name": "adamw", "lr": LR, "weight_decay": 0.0},
        "scheduler": {"name": "constant"},
        "train": {
            "output_dir": str(folder / "run"),
            "max_steps": 1,
            "micro_batch_size": 1,
            "precision": proof.precision,
            "log_every": 1,
            "save_every": 0,
            "seed": 42,
        },
        "eval": {"metrics": []},
    }


def rows_recipe(proof: Proof, folder: Path, case: Case) -> dict[str, Any]:
    """Items 1 and 3: alpaca rows (chatml template, prompt masked) in file order."""
    p = proof.profile
    recipe = base_recipe(proof, folder, p.seq)
    if case.qlora:
        recipe["model"]["quantize"] = "nf4"
    recipe["data"] = {
        "format": "alpaca",
        "train": str(proof.rows_file),
        "template": "chatml",
        "shuffle": False,
        "pack": case.pack,
    }
    if case.liger:
        recipe["adapt"] = [{"method": "liger"}, dict(LORA)]
    recipe["train"].update(
        max_steps=p.steps,
        micro_batch_size=p.packed_micro if case.pack else p.padded_micro,
        compile=case.compile,
    )
    return recipe


def document_recipe(proof: Proof, folder: Path, tokens: int, checkpointing: bool) -> dict:
    """Items 2 and 4: one long document cut to `tokens` tokens, loss on every token."""
    recipe = base_recipe(proof, folder, tokens)
    recipe["data"] = {"format": "text", "train": str(proof.doc_file), "shuffle": False}
    recipe["train"].update(gradient_checkpointing=checkpointing, chunked_loss=True)
    return recipe


# -- FLOPs -----------------------------------------------------------------------------------------
def model_flops_per_token(config: dict[str, Any], lora_r: int, len_sq_over_len: float) -> float:
    """Training FLOPs per real token for LoRA on a frozen base: 2N forward + 2N for the input
    gradients (no weight gradients for the base), 6 per LoRA parameter, and causal attention
    (2 len^2 heads*head_dim per layer forward, twice that backward) averaged over the tokens."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    base = layers * per_layer + config["vocab_size"] * h  # the LM head is a matmul too
    lora = layers * lora_r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))
    attention = 6 * layers * q * len_sq_over_len
    return 4 * base + 6 * lora + attention


# -- item 1 and 3: throughput ----------------------------------------------------------------------
def case_blocker(proof: Proof, case: Case) -> str | None:
    """Why a case cannot run here, or None."""
    env, plugins = proof.env, dict(proof.env.get("tune_plugins", []))
    if "peft" not in plugins:
        return "tune-plugin-peft is not installed (LoRA)"
    if case.liger:
        if not proof.cuda:
            return "no CUDA (Liger's kernels are Triton GPU kernels)"
        if not env["optional"].get("liger_kernel"):
            return "liger-kernel does not import (carry its wheel: bench/gpu_proof.md)"
        if case.side == "tune" and "liger" not in plugins:
            return "tune-plugin-liger is not installed"
    if case.qlora:
        if not env["optional"].get("bitsandbytes"):
            return "bitsandbytes does not import (carry its wheel: bench/gpu_proof.md)"
        if case.side == "tune" and "bitsandbytes" not in plugins:
            return "tune-plugin-bitsandbytes is not installed"
    return None


def run_case(proof: Proof, report: ItemReport, case: Case) -> dict[str, Any]:
    """One side of a comparison in its own process: tune through its CLI, Trainer + PEFT in a
    child of this script."""
    p = proof.profile
    slug = case.name.lower().replace(" + ", "-").replace(" ", "-")
    folder = proof.work / report.key / slug
    recipe = rows_recipe(proof, folder, case)
    from tune.testing import write_recipe

    folder.mkdir(parents=True, exist_ok=True)
    path = write_recipe(folder, recipe)
    row: dict[str, Any] = {"case": case.name, "side": case.side, "reference": case.reference}
    timeout = report.remaining()
    if case.side == "tune":
        cmd = [sys.executable, "-m", "tune", "run", str(path), "--overwrite"]
        outcome = run_process(cmd, folder / "tune.log", timeout, proof.child_env)
        ok = outcome["rc"] == 0 and (folder / "run" / "summary.json").exists()
        measured = tune_measurements(folder / "run", p.warmup) if ok else None
        log = folder / "tune.log"
    else:
        spec = {
            "recipe": str(path),
            "model_dir": str(proof.model_dir),
            "work": str(folder),
            "micro": p.padded_micro,
            "steps": p.steps,
            "warmup": p.warmup,
            "qlora": case.qlora,
            "liger": case.liger,
        }
        outcome, measured = proof.child("trainer", spec, folder, timeout)
        ok = outcome["rc"] == 0 and measured is not None
        log = folder / "trainer.log"
    row["process_s"] = outcome["seconds"]
    if not ok:
        status = "timeout" if outcome["timed_out"] else "failed"
        reason = (
            f"stopped at the item's time share after {outcome['seconds']:.0f} s"
            if outcome["timed_out"]
            else failure_reason(log)
        )
        return {**row, "status": status, "reason": reason, "log_tail": log_tail(log)}
    return {**row, "status": "ok", **(measured or {})}


def compare(proof: Proof, rows: list[dict[str, Any]], baseline: str) -> None:
    """Ratios against the baseline side, MFU, and step-1 loss agreement with each reference."""
    by_name = {r["case"]: r for r in rows if r.get("status") == "ok"}
    base = by_name.get(baseline)
    per_token = None
    if proof.setup:
        per_token = model_flops_per_token(
            proof.setup["model_config"], LORA["r"], proof.setup["len_sq_over_len"]
        )
    for row in rows:
        if row.get("status") != "ok":
            continue
        rate = row.get("tokens_per_s")
        memory = (row.get("peak_memory") or {}).get("bytes")
        row["peak_memory_gib"] = gib(memory)
        if base and rate and base.get("tokens_per_s"):
            row["tokens_per_s_vs_baseline"] = round(rate / base["tokens_per_s"], 3)
        base_memory = ((base or {}).get("peak_memory") or {}).get("bytes")
        if memory and base_memory:
            row["memory_vs_baseline"] = round(memory / base_memory, 3)
        if proof.cuda and per_token and rate:
            row["mfu"] = round(rate * per_token / H100_DENSE_BF16_FLOPS, 4)
        ref = by_name.get(row.get("reference") or "")
        if ref and row.get("losses") and ref.get("losses"):
            a, b = row["losses"][0], ref["losses"][0]
            row["step1_loss"], row["step1_loss_reference"] = a, b
            row["step1_loss_rel_diff"] = round(abs(a - b) / max(abs(b), 1e-12), 6)
        elif row.get("losses"):
            row["step1_loss"] = row["losses"][0]


def throughput_item(proof: Proof, report: ItemReport, cases: list[Case], baseline: str) -> None:
    p = proof.profile
    report.data["work"] = (
        f"{'Llama-3.2-1B' if p.name == 'gpu' else 'tiny Llama'}-shaped random-init model, "
        f"{proof.setup.get('model_dtype')}, LoRA r{LORA['r']} alpha {LORA['alpha']} all-linear, "
        f"AdamW lr {LR} constant, SDPA; max_seq_len {p.seq}; padded {p.padded_micro} examples "
        f"per step, packed {p.packed_micro} rows of {p.seq} per step; {p.steps} steps, the "
        f"first {p.warmup} not timed; precision {proof.precision}; data {proof.setup.get('data')}"
    )
    if proof.cuda:
        report.note(
            "MFU = real tokens/s x model FLOPs per token / 989e12 (H100 dense bf16); model "
            "FLOPs per token = 4 N (forward + input gradients; a frozen base has no weight "
            "gradients) + 6 N_lora + causal attention (bench/gpu_proof.md)."
        )
    for case in cases:
        blocker = case_blocker(proof, case)
        if case.name not in p.plan and case.name not in p.extra:
            blocker = f"not in the {p.name} plan"
        planned = p.plan.get(case.name, p.extra.get(case.name, 0.0))
        if blocker:
            report.add(
                {"case": case.name, "side": case.side, "status": "skipped", "reason": blocker}
            )
            continue
        extra = case.name not in p.plan  # run only with time to spare: not a shortfall
        if report.remaining() < (1.0 if extra else 0.6) * proof.expected(planned):
            report.add(
                {
                    "case": case.name,
                    "side": case.side,
                    "status": "skipped" if extra else "not run",
                    "reason": ("extra run, made only with time to spare: " if extra else "")
                    + f"{max(report.remaining(), 0):.0f} s left of the item's share, "
                    f"expected {proof.expected(planned):.0f} s",
                }
            )
            continue
        print(f"   {case.name} ...", flush=True)
        row = run_case(proof, report, case)
        row["planned_s"] = planned
        proof.observed(planned, row["process_s"] if row["status"] == "ok" else 0.0)
        report.data["results"].append(row)
        compare(proof, report.data["results"], baseline)
        report.save()
        print(f"   {case.name}: {summary_line(row)}", flush=True)
    report.note(
        "Peak memory: the CUDA allocator's max reserved on a GPU (tune's summary figure), the "
        "process's peak RSS on a CPU; each side in its own process."
    )
    report.note(
        "Step-1 loss: a case is compared with the one that trains the same rows in step 1 "
        "(padded with padded; Liger and compile with their plain run); packed and padded "
        "step 1 hold different examples."
    )


def summary_line(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('reason')}"
    return (
        f"{fmt(row.get('tokens_per_s'), ',.0f')} tok/s, peak {fmt(row.get('peak_memory_gib'))} "
        f"GiB, MFU {fmt(row.get('mfu'))}, {row.get('process_s')} s"
    )


def item_throughput(proof: Proof, report: ItemReport) -> None:
    throughput_item(proof, report, THROUGHPUT_CASES, "Trainer + PEFT padded")


def item_qlora(proof: Proof, report: ItemReport) -> None:
    if not proof.env.get("optional", {}).get("bitsandbytes"):
        report.skip("bitsandbytes does not import here (carry its wheel: bench/gpu_proof.md)")
        return
    throughput_item(proof, report, QLORA_CASES, "Trainer + PEFT QLoRA padded")


# -- item 2: longest sequence ----------------------------------------------------------------------
def item_longest(proof: Proof, report: ItemReport) -> None:
    p = proof.profile
    cap = min(int(proof.setup["model_config"]["max_position_embeddings"]), 1 << 20)
    if not proof.cuda:
        report.note(
            "No CUDA: the search runs its probes, but nothing fails on CPU before the model's "
            "positions, so it ends at the cap; peak memory is reported on CUDA only."
        )
    report.data["work"] = (
        f"one document cut to N tokens, micro-batch 1, LoRA r{LORA['r']} all-linear, gradient "
        f"checkpointing, tune's chunked loss (Trainer: the model's own loss over full logits), "
        f"one step; N doubles from {p.longest_start:,} to the first out-of-memory, then "
        f"bisects to {p.longest_grid:,} tokens; capped at the model's {cap:,} positions"
    )
    # (row label, plan entry, [train] tiled_mlp): tune with its defaults, tune with the MLP
    # computed over tiles ([train] tiled_mlp), Trainer + PEFT
    sides = [
        ("tune", "longest: tune", False),
        ("tune + tiled MLP", "longest: tune + tiled MLP", True),
        ("trainer", "longest: Trainer + PEFT", False),
    ]
    for index, (side, plan_name, tiled) in enumerate(sides):
        planned = p.plan[plan_name]
        if report.remaining() < 0.4 * proof.expected(planned):
            report.add({"side": side, "status": "not run", "reason": "item's time share used"})
            continue
        # the first side may use its plan plus any slack, leaving the second its plan
        later = sum(p.plan[n] for _, n, _ in sides[index + 1 :])
        deadline = time.time() + max(report.remaining() - later, 0.4 * planned)
        folder = proof.work / report.key / side.replace(" + ", "-").replace(" ", "-")
        recipe = document_recipe(proof, folder, p.longest_start, checkpointing=True)
        recipe["train"]["tiled_mlp"] = tiled
        spec = {
            "side": "trainer" if side == "trainer" else "tune",
            "start": p.longest_start,
            "grid": p.longest_grid,
            "cap": cap,
            "deadline": deadline - 5,
            "work": str(folder),
            "model_dir": str(proof.model_dir),
            "recipe": recipe,
        }
        print(f"   longest sequence: {side} ...", flush=True)
        outcome, found = proof.child("longest", spec, folder, deadline - time.time())
        row = longest_row(side, outcome, found, folder)
        if row["limit"] in ("memory", "positions"):  # a search cut by time says nothing of pace
            proof.observed(planned, outcome["seconds"])
        report.add(row)
        print(f"   longest sequence: {side}: {row.get('longest_tokens')} ({row.get('stop')})")
    rows = {r["side"]: r for r in report.data["results"]}
    trainer = rows.get("trainer", {})
    # a ratio only of searches that ended at a limit (not cut by time or an error); a side
    # stopped by the model's positions could go further, so the ratio is then a lower bound
    for side, key in (("tune", "tune_vs_trainer"), ("tune + tiled MLP", "tiled_vs_trainer")):
        tune = rows.get(side, {})
        if tune.get("limit") in ("memory", "positions") and trainer.get("limit") == "memory":
            ratio = round(tune["longest_tokens"] / trainer["longest_tokens"], 2)
            report.data[key] = f"{'at least ' if tune['limit'] == 'positions' else ''}{ratio}x"


def longest_row(side: str, outcome: dict, found: dict | None, folder: Path) -> dict[str, Any]:
    probes = (found or {}).get("probes", [])
    ok = [pr for pr in probes if pr.get("ok")]
    failed = [pr for pr in probes if not pr.get("ok")]
    best = max(ok, key=lambda pr: pr["tokens"], default=None)
    stop, limit = (found or {}).get("stop"), (found or {}).get("limit")
    if stop is None:
        limit = "time" if outcome["timed_out"] else "error"
        stop = (
            f"stopped at the item's time share after {outcome['seconds']:.0f} s"
            if outcome["timed_out"]
            else failure_reason(folder / "longest.log")
        )
    row: dict[str, Any] = {
        "side": side,
        "status": "ok" if best else ("timeout" if outcome["timed_out"] else "failed"),
        "longest_tokens": best["tokens"] if best else None,
        "smallest_failed_tokens": min((pr["tokens"] for pr in failed), default=None),
        "stop": stop,
        "limit": limit,
        "peak_memory_gib_at_longest": gib(((best or {}).get("peak_memory") or {}).get("bytes")),
        "step_s_at_longest": (best or {}).get("step_s"),
        "probes": probes,
        "process_s": outcome["seconds"],
    }
    if not best:
        row.update(reason=stop, log_tail=log_tail(folder / "longest.log"))
    return row


# -- item 4: beacon --------------------------------------------------------------------------------
def item_beacon(proof: Proof, report: ItemReport) -> None:
    p = proof.profile
    if "beacon" not in dict(proof.env.get("tune_plugins", [])):
        report.skip("tune-plugin-beacon is not installed")
        return
    folder = proof.work / report.key
    beacon = {
        "method": "beacon",
        "window": p.beacon_window,
        "ratios": [p.beacon_ratio],
        "ratio_mix": "fixed",
    }

    def recipe(name: str, tokens: int, with_beacon: bool, checkpointing: bool) -> dict:
        data = document_recipe(proof, folder / name, tokens, checkpointing)
        if with_beacon:
            data["adapt"] = [dict(beacon), dict(LORA)]
        return data

    configs = []
    plan = [(n, True) for n in p.beacon_lengths] + [(p.beacon_lengths[0], False)]
    for tokens, checkpointing in plan:
        for mode, with_beacon in (("SDPA full attention", False), ("beacon", True)):
            kind = "beacon" if with_beacon else "full"
            name = f"{kind}-{tokens}-{'ckpt' if checkpointing else 'nockpt'}"
            configs.append(
                {
                    "name": name,
                    "mode": mode,
                    "tokens": tokens,
                    "checkpointing": checkpointing,
                    "recipe": recipe(name, tokens, with_beacon, checkpointing),
                }
            )
    report.data["work"] = (
        f"one training step (forward + backward + AdamW) on one document of N tokens, LoRA "
        f"r{LORA['r']} all-linear on the base (both modes), beacon window {p.beacon_window} "
        f"ratio {p.beacon_ratio} (fixed); time = tune's wall time of that step; memory = the "
        f"CUDA allocator's peak (reserved, and allocated) with the cache emptied before each run"
    )
    if not proof.cuda:
        report.note(
            "No CUDA: every configuration runs in one process, so memory is not reported "
            "(peak RSS would be the running maximum); times are CPU times at tiny sizes."
        )
    spec = {
        "work": str(folder),
        "configs": configs,
        "warmup": recipe("warmup", 2 * p.beacon_window, True, True),
    }
    print("   beacon ...", flush=True)
    outcome, found = proof.child("beacon", spec, folder, report.remaining())
    rows = (found or {}).get("rows", [])
    done = {r["name"] for r in rows}
    for row in rows:
        memory = row.get("peak_memory") or {}
        report.data["results"].append(
            {
                "name": row["name"],
                "mode": row["mode"],
                "tokens": row["tokens"],
                "checkpointing": row["checkpointing"],
                "status": "ok" if row["ok"] else "failed",
                "reason": None if row["ok"] else row.get("error"),
                "traceback": row.get("traceback"),
                "step_s": row.get("wall_s"),
                "peak_reserved_gib": gib(memory.get("bytes")),
                "peak_allocated_gib": gib(memory.get("allocated_bytes")),
                "run_s": row.get("probe_s"),
            }
        )
    for config in configs:
        if config["name"] not in done:
            why = (
                "item's time share used"
                if outcome["timed_out"]
                else failure_reason(folder / "beacon.log")
            )
            report.data["results"].append(
                {
                    "name": config["name"],
                    "mode": config["mode"],
                    "tokens": config["tokens"],
                    "checkpointing": config["checkpointing"],
                    "status": "not run" if outcome["timed_out"] else "failed",
                    "reason": why,
                    "log_tail": "" if outcome["timed_out"] else log_tail(folder / "beacon.log"),
                }
            )
    report.save()


# -- item 5: gpu-marked tests ----------------------------------------------------------------------
def gpu_test_files() -> list[Path]:
    """Test files holding `gpu`-marked tests whose plugin module imports here."""
    files = []
    roots = [REPO / "tests", *sorted((REPO / "plugins").glob("*/tests")), REPO / "contrib"]
    for root in roots:
        for path in sorted(root.rglob("test_*.py")):
            if "mark.gpu" not in path.read_text(encoding="utf-8", errors="replace"):
                continue
            if "plugins" in path.parts:
                plugin = path.parts[path.parts.index("plugins") + 1].replace("-", "_")
                if not importable(f"tune_plugin_{plugin}"):
                    continue
            files.append(path)
    return files


def item_gpu_tests(proof: Proof, report: ItemReport) -> None:
    import xml.etree.ElementTree as ET

    files = gpu_test_files()
    if not files:
        report.skip("no gpu-marked test file whose plugin is installed")
        return
    folder = proof.work / report.key
    junit = folder / "junit.xml"
    timeout = report.remaining()
    if timeout < 5:
        report.add({"status": "not run", "reason": "item's time share used"})
        return
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-x", "-q", "-p", "no:cacheprovider"]
    if proof.env.get("optional", {}).get("pytest_timeout"):
        cmd += ["--timeout", str(int(max(timeout - 10, 10)))]
    cmd += [f"--junitxml={junit}", *(str(f.relative_to(REPO)) for f in files)]
    print(f"   pytest -m gpu on {len(files)} files ...", flush=True)
    outcome = run_process(cmd, folder / "pytest.log", timeout, proof.child_env)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    cases = []
    if junit.exists():
        root = ET.parse(junit).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        for suite in suites:
            for key in counts:
                counts[key] += int(suite.get(key, 0))
            for case in suite.iter("testcase"):
                state = "passed"
                for tag in ("failure", "error", "skipped"):
                    node = case.find(tag)
                    if node is not None:
                        state = f"{tag}: {(node.get('message') or '')[:200]}"
                cases.append(
                    {
                        "test": f"{case.get('classname')}::{case.get('name')}",
                        "seconds": float(case.get("time", 0)),
                        "result": state,
                    }
                )
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    row = {
        "command": " ".join(["python", *cmd[1:]]),
        "rc": outcome["rc"],
        "process_s": outcome["seconds"],
        "passed": passed,
        **counts,
        "tests_run": cases,
    }
    if outcome["timed_out"]:
        row.update(status="timeout", reason="stopped at the item's time share")
    elif outcome["rc"] not in (0, 5):  # 5: nothing collected; else a failure or pytest's own
        row.update(
            status="failed",
            reason=failure_reason(folder / "pytest.log"),
            log_tail=log_tail(folder / "pytest.log"),
        )
    elif not proof.cuda:
        row.update(
            status="skipped",
            reason=f"no CUDA: pytest collected {counts['tests']} gpu-marked tests and skipped "
            f"{counts['skipped']}",
        )
    else:
        row["status"] = "ok"
    report.add(row)
    if row["status"] == "skipped":
        report.data.update(status="skipped", reason=row["reason"])


ITEM_RUNNERS: dict[str, Callable[[Proof, ItemReport], None]] = {
    "1-throughput": item_throughput,
    "2-longest-sequence": item_longest,
    "3-qlora": item_qlora,
    "4-beacon": item_beacon,
    "5-gpu-tests": item_gpu_tests,
}


# -- Markdown --------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_item(data: dict[str, Any]) -> str:
    lines = [f"# {data['title']} ({data['item']})", ""]
    lines.append(
        f"Status: **{data['status']}**"
        + (f" ({data['reason']})" if data.get("reason") else "")
        + f"; {data['seconds']} s of a {data['cap_s']} s share (planned {data['planned_s']} s)."
    )
    if data.get("work"):
        lines += ["", f"Work: {data['work']}."]
    lines.append("")
    results = data["results"]
    key = data["item"]
    if key in ("1-throughput", "3-qlora"):
        headers = [
            "case",
            "status",
            "tokens/s",
            "vs baseline",
            "peak GiB",
            "vs baseline",
            "MFU",
            "step-1 loss",
            "rel. diff vs reference",
            "process s",
        ]
        rows = [
            [
                r["case"],
                r["status"] + (f": {r['reason']}" if r.get("reason") else ""),
                fmt(r.get("tokens_per_s"), ",.0f"),
                fmt(r.get("tokens_per_s_vs_baseline"), ".2f"),
                fmt(r.get("peak_memory_gib"), ".2f"),
                fmt(r.get("memory_vs_baseline"), ".2f"),
                fmt(r.get("mfu"), ".1%"),
                fmt(r.get("step1_loss"), ".4f"),
                fmt(r.get("step1_loss_rel_diff"), ".1e")
                + (f" ({r['reference']})" if r.get("step1_loss_rel_diff") is not None else ""),
                fmt(r.get("process_s")),
            ]
            for r in results
        ]
        lines += table(headers, rows)
    elif key == "2-longest-sequence":
        headers = ["side", "status", "longest tokens", "smallest failed", "why it stopped"]
        headers += ["peak GiB at longest", "step s at longest", "probes (tokens: ok/fail)"]
        rows = [
            [
                r["side"],
                r["status"],
                fmt(r.get("longest_tokens"), ","),
                fmt(r.get("smallest_failed_tokens"), ","),
                fmt(r.get("stop") or r.get("reason")),
                fmt(r.get("peak_memory_gib_at_longest"), ".2f"),
                fmt(r.get("step_s_at_longest")),
                ", ".join(
                    f"{p['tokens']:,}: {'ok' if p.get('ok') else 'fail'}"
                    for p in r.get("probes", [])
                ),
            ]
            for r in results
        ]
        lines += table(headers, rows)
        if data.get("tune_vs_trainer"):
            lines += ["", f"tune / Trainer + PEFT longest: {data['tune_vs_trainer']}"]
        if data.get("tiled_vs_trainer"):
            lines += [f"tune + tiled MLP / Trainer + PEFT longest: {data['tiled_vs_trainer']}"]
    elif key == "4-beacon":
        headers = ["tokens", "mode", "checkpointing", "status", "step s", "peak reserved GiB"]
        headers.append("peak allocated GiB")
        rows = [
            [
                fmt(r.get("tokens"), ","),
                r["mode"],
                "yes" if r.get("checkpointing") else "no",
                r["status"] + (f": {r['reason']}" if r.get("reason") else ""),
                fmt(r.get("step_s")),
                fmt(r.get("peak_reserved_gib"), ".2f"),
                fmt(r.get("peak_allocated_gib"), ".2f"),
            ]
            for r in results
        ]
        lines += table(headers, rows)
    elif key == "5-gpu-tests":
        for r in results:
            lines.append(f"`{r.get('command')}`: rc {r.get('rc')}, {r.get('process_s')} s")
            lines.append("")
            lines += table(
                ["passed", "failures", "errors", "skipped"],
                [[str(r.get(k, "-")) for k in ("passed", "failures", "errors", "skipped")]],
            )
            lines += ["", *(f"- {t['test']}: {t['result']}" for t in r.get("tests_run", []))]
    elif key == "0-environment":
        env = data.get("environment", {})
        gpu = env.get("gpu") or {}
        lines += [
            f"- CUDA: {env.get('cuda')}"
            + (f", {gpu.get('name')} ({gpu.get('memory_gib')} GiB)" if gpu else ""),
            f"- python {env.get('python')}, torch CUDA {env.get('torch_cuda')}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
            "- optional wheels importable: "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env.get("optional", {}).items()),
            "- tune plugins: " + ", ".join(name for name, _ in env.get("tune_plugins", [])),
        ]
        setup = data.get("setup") or {}
        if setup:
            lines += [
                f"- data: {setup.get('data')}; {setup.get('examples')} examples, mean "
                f"{setup.get('mean_len')} tokens, longest {setup.get('max_len')}",
                f"- model: {setup.get('parameters'):,} parameters, {setup.get('model_dtype')}; "
                f"setup {setup.get('seconds')} s",
            ]
        lines += ["", "Plan (s) and deadlines:", ""]
        lines += table(
            ["item", "planned s", "deadline, s into the run (shares are cumulative)"],
            [[k, fmt(v[0]), fmt(v[1])] for k, v in data.get("plan", {}).items()],
        )
    if data.get("notes"):
        lines += ["", *(f"- {n}" for n in data["notes"])]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------
def plan_rows(proof: Proof) -> dict[str, tuple[float, float | None]]:
    """Planned seconds and deadline (seconds into the run) of the set-up and each item."""
    deadlines = proof.deadlines()
    rows: dict[str, tuple[float, float | None]] = {"setup": (proof.profile.plan["setup"], None)}
    for key, (planned, deadline) in deadlines.items():
        rows[key] = (planned, round(deadline - proof.start, 1))
    return rows


def run_setup(proof: Proof) -> ItemReport:
    """The environment check and the shared model, tokenizer, rows and long document."""
    report = ItemReport(proof, "0-environment", proof.start + proof.budget, 0.0)
    report.data.update(title="Environment and set-up", planned_s=proof.profile.plan["setup"])
    proof.work.mkdir(parents=True, exist_ok=True)
    folder = proof.work / "setup"
    from tune.testing import write_recipe

    folder.mkdir(parents=True, exist_ok=True)
    recipe = write_recipe(folder, rows_recipe(proof, folder, Case("setup", "tune")))
    spec = {
        "profile": proof.profile.name,
        "build": any(key[0] in "1234" for key in proof.items),
        "work": str(proof.work),
        "data": proof.args.data,
        "rows_file": str(proof.rows_file),
        "doc_file": str(proof.doc_file),
        "model_dir": str(proof.model_dir),
        "recipe": str(recipe),
    }
    # a GPU machine's first torch import reads CUDA's libraries cold: allow for it
    timeout = max(4 * proof.profile.plan["setup"], 60.0)
    outcome, found = proof.child("setup", spec, folder, timeout)
    found = found or {}
    proof.env = found.get("environment", {})
    proof.setup = found.get("setup", {})
    report.data.update(environment=proof.env, setup=proof.setup, plan=plan_rows(proof))
    if not proof.env or (not proof.setup and spec["build"]):
        report.data["log_tail"] = log_tail(folder / "setup.log")
    if not proof.env:
        report.data.update(status="failed", reason=failure_reason(folder / "setup.log"))
    elif not proof.cuda and not proof.args.dry_run:
        report.data.update(status="skipped", reason="no CUDA GPU: nothing built")
    elif not proof.setup and spec["build"]:
        report.data.update(
            status="failed", reason="set-up failed: " + failure_reason(folder / "setup.log")
        )
    else:
        report.data["status"] = "ok"
    report.data["process_s"] = outcome["seconds"]
    if report.data["status"] == "ok" and spec["build"]:
        proof.observed(proof.profile.plan["setup"], outcome["seconds"])
    report.save()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="results folder (one JSON + one Markdown per item)")
    parser.add_argument("--budget-s", type=float, help="whole run; default 480 (dry run 170)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes, 2 steps")
    parser.add_argument("--items", default="1,2,3,4,5", help="which items, e.g. 1,4")
    parser.add_argument(
        "--data", default="auto", help="auto | synthetic | PATH of alpaca rows (.json)"
    )
    parser.add_argument("--work", help="scratch folder (model, runs); default beside --out")
    parser.add_argument("--bundle", help="also pack --out into this .tar.gz after every item")
    parser.add_argument("--plan", action="store_true", help="print the plan and exit")
    parser.add_argument("--child", nargs=2, metavar=("ROLE", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, spec = args.child
        CHILDREN[role](read_json(Path(spec)))
        return
    if args.plan:
        proof = Proof(argparse.Namespace(**{**vars(args), "out": args.out or "."}))
        rows = plan_rows(proof)
        for key, (planned, deadline) in rows.items():
            at = f"   deadline at {deadline:4.0f} s" if deadline is not None else ""
            print(f"{key:20s} planned {planned:4.0f} s{at}")
        total = sum(planned for planned, _ in rows.values())
        print(f"{'total':20s} planned {total:4.0f} s of a {proof.budget:.0f} s budget")
        return
    if not args.out:
        parser.error("--out DIR is required")
    proof = Proof(args)
    proof.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu proof ({proof.profile.name}), budget {proof.budget:.0f} s -> {proof.out}")
    setup = run_setup(proof)
    print(f"0-environment: {setup.data['status']} {setup.data.get('reason') or ''}", flush=True)
    proof.bundle()
    for key, (planned, deadline) in proof.deadlines().items():
        report = ItemReport(proof, key, deadline, planned)
        report.save()  # "running" from its first second: a cut-off call still shows where
        print(f"{key} (share {report.data['cap_s']:.0f} s)", flush=True)
        try:
            if not proof.cuda and not args.dry_run:
                report.skip("no CUDA GPU: the proof measures CUDA paths; on a CPU use --dry-run")
            elif setup.data["status"] != "ok" and key != "5-gpu-tests":
                report.data.update(status="failed", reason="set-up failed (0-environment)")
            else:
                ITEM_RUNNERS[key](proof, report)
        except Exception as exc:  # one item's bug is recorded; the next item still runs
            report.data.update(status="failed", reason=error_text(exc))
        report.finish()
        print(f"{key}: {report.data['status']} ({report.data['seconds']} s)", flush=True)
        proof.bundle()
    total = time.monotonic() - proof.start
    print(f"done in {total:.0f} s of a {proof.budget:.0f} s budget; results in {proof.out}")
    for key in ["0-environment", *proof.items]:
        path = proof.out / f"{key}.md"
        if path.exists():
            print("\n" + path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
