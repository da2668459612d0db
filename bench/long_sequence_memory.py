"""Peak memory of one training step at long sequence lengths, and its growth per token, CPU.

Model: SmolLM2-135M's shape (hidden 576, 9 heads / 3 KV heads, intermediate 1536, vocab 49,152,
tied embeddings; from bench/vs_trainer.py) with `--layers` decoder layers (default 4; the real
model has 30: see "scaling" in the report), random init, built from its config in code, with
max_position_embeddings 32,768 so every length is in range. Tokenizer: tune's byte-level tiny
tokenizer (one token per character), so a text row of random letters cut at max_seq_len is
exactly that many tokens. Nothing is downloaded.

Work: one optimizer step on one row of L tokens (every token trained), LoRA r8 (alpha 16, no
dropout) on all linear layers, AdamW, fp32, gradient checkpointing (non-reentrant) on all sides:
  trainer  transformers Trainer + PEFT (its own loss: full [L, vocab] logits)
  tune     `tune run` with its defaults (chunked loss, lean activations)
  tiled    tune + `[train] tiled_mlp = true` (tiles of `tiled_mlp_tokens`, default 1,024)
  sp       tiled + `[strategy] name = "ddp", sequence_parallel = 2`: 2 processes (torchrun, gloo)
           each holding half of the row (Ulysses attention; SmolLM2's 9 heads / 3 KV heads split
           6 + 3 by KV head); the peak is the larger rank's
Both load the model the same way (sdpa attention, transformers' default; tune names none).

Each (side, L) runs in a fresh subprocess, as bench/vs_trainer.py does: peak RSS is the child's
`ru_maxrss` after the step; the tune side starts with the environment `tune run` re-executes
itself with (tune.machine.hostmem), Trainer with this process's. The slope of peak RSS over L
(least squares) is each side's memory per added token; its intercept is the fixed part (model,
optimizer, libraries). The longest L that fits a budget follows from the two, an
extrapolation beyond the lengths measured.

    python bench/long_sequence_memory.py [--lengths 2048,4096,8192,16384] [--layers 4]
    python bench/long_sequence_memory.py --sides tiled,sp --merge bench/results/OLD.json
        (run some sides or lengths again; the other cases' results come from OLD.json)

Writes bench/results/long-sequence-memory-<date>.json, .md and .png (matplotlib permitting).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from tune.testing import SMOLLM2_135M, save_random_llama  # noqa: E402
from vs_trainer import side_environment  # noqa: E402

SIDES = ("trainer", "tune", "tiled", "sp")
SP = 2  # processes of the sequence-parallel side
LABELS = {
    "trainer": "(a) Trainer + PEFT, grad. checkpointing",
    "tune": "(b) tune defaults, grad. checkpointing",
    "tiled": "(c) tune + tiled_mlp, grad. checkpointing",
    "sp": f"(d) (c) + {SP}-process sequence parallelism, per rank",
}
MAX_POSITIONS = 32768
LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "targets": "all-linear"}
GiB = 2**30


# -- shared set-up (parent) -------------------------------------------------------------------
def build_model_dir(work: Path, layers: int) -> Path:
    """The random-init SmolLM2-135M-shaped model with `layers` layers and a byte tokenizer."""
    target = work / f"smollm2-135m-{layers}l"
    if (target / "config.json").exists():
        return target
    from tune.builtin.tiny import load_tokenizer

    tokenizer = load_tokenizer("tiny-llama")
    tokenizer.model_max_length = MAX_POSITIONS
    shape = {**SMOLLM2_135M, "num_hidden_layers": layers, "max_position_embeddings": MAX_POSITIONS}
    return save_random_llama(target, shape, tokenizer)


def data_file(work: Path, length: int) -> Path:
    """One text row of random letters, longer than `length` tokens (cut at max_seq_len)."""
    path = work / f"text-{length}.jsonl"
    if not path.exists():
        rng = random.Random(length)
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz      ") for _ in range(length + 64))
        path.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    return path


def recipe(work: Path, model_dir: Path, length: int, side: str) -> Path:
    from tune.testing import recipe_dict, write_recipe

    data = recipe_dict(
        work,
        model={"path": str(model_dir), "max_seq_len": length},
        data={
            "format": "text",
            "train": str(data_file(work.parent, length)),
            "truncation": "truncate",
            "shuffle": False,
            "cache": False,
        },
        adapt=[LORA],
        optimizer={"name": "adamw", "lr": 2e-4, "weight_decay": 0.0},
        train={
            "output_dir": str(work / "run"),
            "max_steps": 1,
            "micro_batch_size": 1,
            "precision": "fp32",
            "gradient_checkpointing": True,
            "tiled_mlp": side in ("tiled", "sp"),
            "save_every": 0,
        },
        **({"strategy": {"name": "ddp", "sequence_parallel": SP}} if side == "sp" else {}),
    )
    data["data"].pop("template", None)
    return write_recipe(work, data)


# -- one side at one length (child process) ---------------------------------------------------
def run_tune(path: Path) -> tuple[int, float]:
    from tune.testing import run, train_losses

    summary, _ = run(path, overwrite=True)
    del summary
    return 0, train_losses(path.parent / "run")[0]


def run_trainer(path: Path) -> tuple[int, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed
    from tune.testing import load_recipe, tokenize

    rec = load_recipe(path)
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in tokenize(rec).train]
    set_seed(rec.train.seed)
    model = AutoModelForCausalLM.from_pretrained(rec.model.path, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=str(path.parent / "trainer"),
        per_device_train_batch_size=1,
        max_steps=1,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    losses: list[float] = []
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows))
    out = trainer.train()
    losses.append(float(out.training_loss))
    return len(rows[0]["input_ids"]), losses[0]


def child(side: str, length: int, work: Path, model_dir: Path) -> dict:
    case = work / f"{side}-{length}"
    case.mkdir(parents=True, exist_ok=True)
    path = recipe(case, model_dir, length, side)
    masks = record_attention_masks()
    start = time.perf_counter()
    tokens, loss = run_trainer(path) if side == "trainer" else run_tune(path)
    seconds = time.perf_counter() - start
    import torch
    from tune.machine.hostmem import describe

    return {
        "side": side,
        "rank": int(os.environ.get("RANK", 0)),
        "length": length,
        "tokens": tokens or length,
        "loss": round(loss, 5),
        "seconds": round(seconds, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "host_allocator": describe(),
        "sdpa_calls": sorted(masks),
        "threads": torch.get_num_threads(),
    }


def record_attention_masks() -> set[str]:
    """How the model calls sdpa (with a mask tensor, CPU's math path builds [heads, L, L];
    without one and is_causal, the flash kernel works in blocks): recorded per call."""
    import torch.nn.functional as F

    seen: set[str] = set()
    original = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, *args, **kwargs):
        mask = "no mask" if attn_mask is None else f"mask {tuple(attn_mask.shape)}"
        seen.add(f"{mask}, is_causal={kwargs.get('is_causal', False)}")
        return original(q, k, v, attn_mask, *args, **kwargs)

    F.scaled_dot_product_attention = recording
    return seen


# -- sdpa on CPU: does it build [heads, L, L]? --------------------------------------------------
def sdpa_probe(length: int) -> dict:
    """Largest allocation the CPU profiler sees in one sdpa call of the model's attention
    shape (9 heads, head_dim 64), forward + backward: causal without a mask (what these steps
    do) and with a boolean [1, 1, L, L] mask (what transformers passes for padded or packed
    rows), against a materialized [heads, L, L] fp32 score matrix."""
    import torch
    import torch.nn.functional as F

    heads, dim = SMOLLM2_135M["num_attention_heads"], 64
    q, k, v = (torch.randn(1, heads, length, dim, requires_grad=True) for _ in range(3))
    found: dict = {"length": length, "heads_L_L_fp32_bytes": heads * length * length * 4}
    cases = {"causal": {"is_causal": True}}
    cases["bool_mask"] = {
        "attn_mask": torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    }
    for name, kwargs in cases.items():
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            F.scaled_dot_product_attention(q, k, v, **kwargs).sum().backward()
        events = prof.key_averages()
        found[f"{name}_largest_bytes"] = int(max(e.cpu_memory_usage for e in events))
        found[f"{name}_kernels"] = sorted(
            {e.key for e in events if e.key.startswith("aten::") and "attention" in e.key}
        )
        q.grad = k.grad = v.grad = None
    return found


# -- fit and report -----------------------------------------------------------------------------
def fit(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares (slope bytes/token, intercept bytes) of peak RSS over length."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return slope, my - slope * mx


def per_token_model(
    side: str, layers: int, h: int, q: int, kv: int, i: int, heads: int, vocab: int, b: int
) -> float:
    """Bytes per token a side keeps at its backward peak, from the shapes (the analytic model
    the measured slope calibrates): the checkpointed layer inputs, one decoder layer recomputed
    (as tune estimate counts it: norms, q/k/v/out, the MLP's intermediates, LoRA middles), and
    for Trainer the full logits with their fp32 log-softmax and gradients."""
    layer = 2 * h + 2 + 2 * h + 2 * q + 2 * kv + heads + 7 * 8
    mlp = {"trainer": 4 * i, "tune": 2 * i, "tiled": 0, "sp": 0}[side]  # tune: lean activations
    logits = 3 * vocab * 4 + (vocab * b if b == 2 else 0) if side == "trainer" else 0
    # sequence parallelism: every rank holds 1/SP of every per-token term
    return (layers * h * b + (layer + mlp) * b + logits) / (SP if side == "sp" else 1)


def extrapolate(results: list[dict], layers: int) -> dict:
    """Per side: slope, intercept, longest L in 16 GiB here; and for Llama-3-8B on an 80 GB GPU
    (bf16 weights, LoRA r8): the analytic per-token bytes scaled by this side's measured/model
    ratio, over what the weights leave free."""
    sm = SMOLLM2_135M
    small = {
        "layers": layers, "h": sm["hidden_size"], "q": 576, "kv": 192,
        "i": sm["intermediate_size"], "heads": 9, "vocab": sm["vocab_size"], "b": 4,
    }  # fmt: skip
    full = {**small, "layers": 30}
    llama8b = {
        "layers": 32, "h": 4096, "q": 4096, "kv": 1024, "i": 14336, "heads": 32,
        "vocab": 128256, "b": 2,
    }  # fmt: skip
    out = {}
    for side in SIDES:
        pts = [(r["tokens"], r["peak_rss_bytes"]) for r in results if r["side"] == side]
        if len(pts) < 2:
            continue
        slope, intercept = fit(pts)
        calib = slope / per_token_model(side, **small)
        per_token_30 = calib * per_token_model(side, **full)
        per_token_8b = calib * per_token_model(side, **llama8b)
        free_8b = 80e9 - 8.03e9 * 2 - 4e9  # bf16 weights, LoRA states, CUDA context, workspace
        out[side] = {
            "bytes_per_token": slope,
            "intercept_bytes": intercept,
            "measured_over_model": calib,
            "max_len_16gib_here": int((16 * GiB - intercept) / slope) if slope > 0 else None,
            "bytes_per_token_30_layers": per_token_30,
            "bytes_per_token_llama3_8b": per_token_8b,
            "max_len_llama3_8b_80gb": int(free_8b / per_token_8b),
        }
        if side == "sp":  # the same per-token model over 8 ranks (sequence_parallel = 8)
            out[side]["max_len_llama3_8b_80gb_sp8"] = int(free_8b / (per_token_8b * SP / 8))
    return out


def write(
    results: list[dict], probes: list[dict], args, out: Path, date: str | None = None
) -> None:
    import peft
    import torch
    import transformers

    date = date or datetime.date.today().isoformat()
    fits = extrapolate(results, args.layers)
    meta = {
        "date": date,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared), {platform.platform()}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "command": "python bench/long_sequence_memory.py " + " ".join(sys.argv[1:]),
        "model": f"random-init SmolLM2-135M shape, {args.layers} layers, max positions "
        f"{MAX_POSITIONS}",
        "work": "1 step, 1 row of L tokens, LoRA r8 all-linear, AdamW, fp32, grad. checkpointing",
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"long-sequence-memory-{date}"
    stem.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": results, "fits": fits, "sdpa": probes}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    lengths = sorted({r["length"] for r in results})
    by = {(r["side"], r["length"]): r for r in results}
    md = [f"# Long-sequence memory: one training step, peak RSS ({date})", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    md += [
        "",
        "Peak RSS of a fresh process per case (GiB); in parentheses the seconds of the whole "
        "child (load, tokenize, one step, save) on a CPU shared with other jobs (load 3-8): "
        "not a speed comparison. Each side starts with its tool's allocator settings (tune: "
        "glibc tcache and fastbins off, as `tune run` re-executes itself; Trainer: glibc "
        "defaults), as in vs_trainer.py. Every side's loss is the same at each length.",
        "",
    ]
    md += ["| side | " + " | ".join(f"L={n:,}" for n in lengths) + " | bytes/token | fixed GiB |"]
    md += ["|---|" + "---:|" * (len(lengths) + 2)]
    for side in SIDES:
        cells = [
            f"{by[(side, n)]['peak_rss_bytes'] / GiB:.2f} ({by[(side, n)]['seconds']:.0f})"
            if (side, n) in by
            else "-"
            for n in lengths
        ]
        f = fits.get(side, {})
        md.append(
            f"| {LABELS[side]} | " + " | ".join(cells) + f" | {f.get('bytes_per_token', 0):,.0f} "
            f"| {f.get('intercept_bytes', 0) / GiB:.2f} |"
        )
    skipped = [n for n in lengths if ("trainer", n) not in by]
    if skipped and "trainer" in fits:
        f = fits["trainer"]
        guess = ", ".join(
            f"{(f['intercept_bytes'] + f['bytes_per_token'] * n) / GiB:.1f} GiB at L={n:,}"
            for n in skipped
        )
        md += [
            "",
            f"Trainer was not run beyond L={max(n for s, n in by if s == 'trainer'):,} "
            f"(`--trainer-max`; this machine's RAM is shared): its fit predicts {guess}.",
        ]
    if "trainer" in fits:
        md += ["", "Bytes per added token against Trainer + PEFT:"]
        md += [
            f"- {LABELS[s]}: {fits[s]['bytes_per_token'] / fits['trainer']['bytes_per_token']:.3f}x"
            for s in SIDES
            if s in fits
        ]
    if "sp" in fits and "tiled" in fits:
        ratio = fits["sp"]["bytes_per_token"] / fits["tiled"]["bytes_per_token"]
        md += [
            "",
            f"{LABELS['sp']} against {LABELS['tiled']}: {ratio:.3f}x bytes per added token "
            f"(goal <= 0.55x; {SP} ranks, so 0.5x is the split alone).",
        ]
        short = sorted({r["length"] for r in results if r["side"] == "sp"})[:-1]
        if len(short) >= 2:  # the same fit without the longest length: how much noise moves it
            part = [(s, fit([(r["tokens"], r["peak_rss_bytes"]) for r in results
                             if r["side"] == s and r["length"] in short])[0])
                    for s in ("sp", "tiled")]  # fmt: skip
            md[-1] += (
                f" Without L={max(n for n in by_len(results, 'sp')):,}: "
                f"{part[0][1] / part[1][1]:.3f}x; peak RSS moves by about 0.1 GiB from run to "
                "run here (allocator), so short ranges give noisy slopes. Both ranks peak alike "
                "(the heads split 6 + 3, yet rank 1 is not lower), so the uneven heads are not "
                "what keeps (d) above 0.5x."
            )
    md += [
        "",
        "## Longest sequence that fits (extrapolation from the slopes)",
        "",
        "16 GiB here: (16 GiB - fixed) / bytes per token, this model. Llama-3-8B on 80 GB "
        "(bf16 weights 16.1 GB + 4 GB for LoRA states, CUDA context and workspace): the "
        "analytic bytes per token of each side (checkpointed layer inputs + one recomputed "
        "layer + Trainer's full logits; `per_token_model` in the script) for Llama-3-8B's "
        "shape in bf16, times this side's measured/analytic ratio here. Extrapolations, not "
        "measurements: a GPU run also holds allocator slack and attention workspaces. (d) "
        f"is per rank: {SP} GPUs of 80 GB each hold the length given"
        + (
            f"; with sequence_parallel = 8 on 8 GPUs, {fits['sp']['max_len_llama3_8b_80gb_sp8']:,}"
            " tokens (the same per-token model over 8 ranks; Llama-3-8B's 8 KV heads allow 8)."
            if "sp" in fits
            else "."
        ),
        "",
        "| side | measured / analytic | max L, 16 GiB, this model | bytes/token, 30-layer "
        "SmolLM2-135M | bytes/token, Llama-3-8B bf16 | max L, Llama-3-8B, 80 GB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side in SIDES:
        if side not in fits:
            continue
        f = fits[side]
        md.append(
            f"| {LABELS[side]} | {f['measured_over_model']:.2f} | {f['max_len_16gib_here']:,} | "
            f"{f['bytes_per_token_30_layers']:,.0f} | {f['bytes_per_token_llama3_8b']:,.0f} | "
            f"{f['max_len_llama3_8b_80gb']:,} |"
        )
    calls = sorted({c for r in results for c in r.get("sdpa_calls", [])})
    if probes:
        kernels = sorted({k for p in probes for k in p.get("causal_kernels", [])})
        md += [
            "",
            "## Attention on CPU (sdpa)",
            "",
            f"Every step above called sdpa with: {'; '.join(calls) or '(not recorded)'}. The "
            "probe: one `scaled_dot_product_attention` call of this model's shape (9 heads x "
            "64), forward + backward, under the CPU profiler; the largest single allocation, "
            "causal without a mask (as above) and with the boolean [1, 1, L, L] mask transformers "
            "passes for padded or packed rows, against a materialized [heads, L, L] fp32 score "
            f"matrix. Kernels: {', '.join(kernels)}."
            + (f" Probed by `{probes[0]['command']}`." if probes[0].get("command") else ""),
            "",
            "| L | causal, no mask: largest allocation MiB | boolean mask: largest allocation MiB "
            "| [heads, L, L] fp32 MiB |",
            "|---:|---:|---:|---:|",
        ]
        md += [
            f"| {p['length']:,} | {p['causal_largest_bytes'] / 2**20:,.1f} | "
            f"{p['bool_mask_largest_bytes'] / 2**20:,.1f} | "
            f"{p['heads_L_L_fp32_bytes'] / 2**20:,.0f} |"
            for p in probes
            if "causal_largest_bytes" in p
        ]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    plot(results, stem.with_suffix(".png"), args.layers)


def by_len(results: list[dict], side: str) -> list[int]:
    return [r["length"] for r in results if r["side"] == side]


def plot(results: list[dict], path: Path, layers: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for side in SIDES:
        pts = sorted((r["tokens"], r["peak_rss_bytes"] / GiB) for r in results if r["side"] == side)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=LABELS[side])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("peak RSS (GiB)")
    ax.set_title(f"One LoRA training step, SmolLM2-135M shape ({layers} layers), CPU fp32")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2048,4096,8192,16384")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tune-long-seq"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--trainer-max",
        type=int,
        default=8192,
        help="longest L for Trainer (its full logits need ~12 GiB more at 16K; others share "
        "this machine's RAM)",
    )
    parser.add_argument("--no-probe", action="store_true", help="skip the sdpa probe")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help="re-render the report of a saved .json")
    parser.add_argument("--reprobe", action="store_true", help="with --report: probe sdpa again")
    parser.add_argument(
        "--merge", type=Path, help="a saved .json: its cases not run again now are kept"
    )
    args = parser.parse_args()
    work = Path(args.work)
    if args.report:
        saved = json.loads(args.report.read_text(encoding="utf-8"))
        if args.reprobe:  # the sdpa probe again, into the saved results
            lengths = sorted({r["length"] for r in saved["results"]})
            saved["sdpa"] = [
                _child_result([*base_cmd(args), "--probe", str(n)], dict(os.environ))
                for n in lengths
            ]
            command = "python bench/long_sequence_memory.py " + " ".join(sys.argv[1:])
            for probe in saved["sdpa"]:
                probe["command"] = command
            args.report.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
        sys.argv = ["", *saved["meta"]["command"].split()[2:]]
        write(saved["results"], saved["sdpa"], args, Path(args.out), saved["meta"]["date"])
        return
    if args.probe:
        print("RESULT " + json.dumps(sdpa_probe(args.probe)), flush=True)
        return
    if args.child:
        side, length = args.child[0], int(args.child[1])
        model_dir = work / f"smollm2-135m-{args.layers}l"
        print("RESULT " + json.dumps(child(side, length, work, model_dir)), flush=True)
        return
    work.mkdir(parents=True, exist_ok=True)
    build_model_dir(work, args.layers)
    base = base_cmd(args)
    results: list[dict] = []
    probes: list[dict] = []
    planned = {(s, n) for s in args.sides.split(",") for n in map(int, args.lengths.split(","))}
    if args.merge:  # keep the saved cases not run again now
        saved = json.loads(args.merge.read_text(encoding="utf-8"))
        results = [r for r in saved["results"] if (r["side"], r["length"]) not in planned]
        probes = saved.get("sdpa", [])
        args.no_probe = True
    for length in map(int, args.lengths.split(",")):
        for side in args.sides.split(","):
            if side == "trainer" and length > args.trainer_max:
                continue
            print(f"== {side} L={length}", flush=True)
            env = side_environment("tune" if side != "trainer" else "trainer", {})
            cmd = [*base, "--child", side, str(length)]
            if side == "sp":  # the same script as each rank, under torchrun
                launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={SP}"]
                cmd = [cmd[0], *launch, *cmd[1:]]
            found = _child_result(cmd, env)
            results.append(found)
            print(
                f"   peak RSS {found['peak_rss_bytes'] / GiB:.2f} GiB, {found['seconds']} s, "
                f"loss {found['loss']}",
                flush=True,
            )
            write(results, probes, args, Path(args.out))  # a cut-short run still reports
        if not args.no_probe:
            probes.append(_child_result([*base, "--probe", str(length)], dict(os.environ)))
    write(results, probes, args, Path(args.out))


def base_cmd(args) -> list[str]:
    """This script as a child process, with the run's model and work folder."""
    return [sys.executable, __file__, "--layers", str(args.layers), "--work", str(args.work)]


def _child_result(cmd: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    found = [
        json.loads(x[len("RESULT ") :]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")
    ]
    if proc.returncode or not found:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{cmd[-2:]} failed")
    if len(found) == 1:
        return found[0]
    # several ranks: the largest peak (what each device must hold), every rank's kept
    top = max(found, key=lambda r: r["peak_rss_bytes"])
    return {**top, "rank_peaks_bytes": [r["peak_rss_bytes"] for r in found]}


if __name__ == "__main__":
    main()
