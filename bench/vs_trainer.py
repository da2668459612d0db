"""tune vs transformers Trainer + PEFT on the same work: tokens/s and peak memory, CPU.

Model: a random-init model with SmolLM2-135M's public config (hidden 576, 30 layers, 9 heads,
3 KV heads, intermediate 1536, vocab 49,152, tied embeddings), built in code; its tokenizer is
a byte-level BPE trained in code on the data (so examples have realistic lengths); nothing is
downloaded. Data: ../shared/data/alpaca_en_demo.json, tokenized once by tune (alpaca format,
chatml template, prompt masked); Trainer gets exactly those examples, in the same order.
Both sides: LoRA r8 (alpha 16, no dropout) on all linear layers, AdamW lr 2e-4, constant
schedule, fp32, micro-batch 4, max_seq_len 512, no gradient checkpointing, no shuffling.

Each case is one side in its own subprocess (so peak RSS is that side's alone); cases alternate
tune / Trainer. Tokens/s counts real (non-pad) tokens over the steps after `--warmup`.

Cases: padded (both); packed (tune, rows of 512 filled end to end) vs Trainer with its
padding-free collator (DataCollatorWithFlattening); tune with chunked_loss off; tune with
compile on; tune with lean_activations off; tune with gradient checkpointing (less memory for
recomputation); QLoRA nf4 (both, bitsandbytes); malloc_swapped: tune on glibc's default
allocator settings and Trainer on the ones `tune run` starts with (tune.machine.hostmem).

Each side starts as its tool would: the tune side with the environment `tune run` re-executes
itself with (glibc's tcache and fastbins off, see tune.machine.hostmem), Trainer with this process's.

    python bench/vs_trainer.py [--steps 4] [--warmup 1] [--cases padded,packed,...]

Writes bench/results/vs-trainer-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tune.testing import SMOLLM2_135M, save_random_llama

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
SEQ, MICRO, LR = 512, 4, 2e-4
# case -> [(side, options)], run in this order
CASES = {
    "padded": [("tune", {}), ("trainer", {})],
    "packed": [("tune", {"pack": True}), ("trainer", {"flatten": True})],
    "chunked_off": [("tune", {"chunked_loss": False})],
    "lean_off": [("tune", {"lean_activations": False})],
    "compile": [("tune", {"compile": True})],
    "checkpointing": [("tune", {"gradient_checkpointing": True})],
    "qlora": [("tune", {"qlora": True}), ("trainer", {"qlora": True})],
    # the host allocator each side starts with, swapped: what of the memory gap it explains
    "malloc_swapped": [("tune", {"malloc": "system"}), ("trainer", {"malloc": "tuned"})],
    # the ordinary case of issue 38: padded micro-batches of 4 chat rows up to 512 tokens
    # (run with --steps 3 --warmup 0); the tune side also gets `tune estimate` against it
    "chat512": [("tune", {"chat": True}), ("trainer", {"chat": True})],
}
# the order of a full run: the headline comparisons first
ORDER = [
    "padded",
    "malloc_swapped",
    "packed",
    "chunked_off",
    "lean_off",
    "checkpointing",
    "compile",
    "qlora",
    "chat512",
]


# -- shared set-up (parent) -------------------------------------------------------------------------
def build_model_dir(root: Path) -> Path:
    """The random-init SmolLM2-135M-shaped model and a BPE tokenizer trained on the data."""
    target = root / "smollm2-135m-random"
    if (target / "config.json").exists():
        return target
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from tune.data.templates import CHATML

    rows = json.loads(DATA.read_text(encoding="utf-8"))
    texts = [" ".join((r["instruction"], r["input"], r["output"])) for r in rows]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=16000,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        chat_template=CHATML,
        model_max_length=8192,
    )
    return save_random_llama(target, SMOLLM2_135M, tokenizer)


def chat_rows(work: Path) -> Path:
    """alpaca_en_demo as chat rows (user: instruction and input; assistant: output)."""
    path = work / "alpaca-chat.jsonl"
    if not path.exists():
        rows = json.loads(DATA.read_text(encoding="utf-8"))
        lines = []
        for r in rows:
            user = "\n\n".join(x for x in (r["instruction"], r["input"]) if x)
            turns = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": r["output"]},
            ]
            lines.append(json.dumps({"messages": turns}))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def recipe(work: Path, model_dir: Path, steps: int, opts: dict) -> Path:
    from tune.testing import recipe_dict, write_recipe

    chat = bool(opts.get("chat"))
    data = recipe_dict(
        work,
        model={"path": str(model_dir), "max_seq_len": SEQ}
        | ({"quantize": "nf4"} if opts.get("qlora") else {}),
        data={
            "format": "chat" if chat else "alpaca",
            "train": str(chat_rows(work.parent) if chat else DATA),
            "template": "chatml",
            "shuffle": False,
            "pack": bool(opts.get("pack")),
        },
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "targets": "all-linear"}],
        optimizer={"name": "adamw", "lr": LR, "weight_decay": 0.0},
        train={
            "output_dir": str(work / "run"),
            "max_steps": steps,
            "micro_batch_size": MICRO,
            "chunked_loss": opts.get("chunked_loss", True),
            "compile": bool(opts.get("compile")),
            "lean_activations": opts.get("lean_activations", True),
            "gradient_checkpointing": bool(opts.get("gradient_checkpointing")),
            "save_every": 0,
        },
    )
    return write_recipe(work, data)


# -- one side (child process) -----------------------------------------------------------------------
def run_tune(path: Path) -> tuple[list[float], list[int], list[float]]:
    """(step end times, real tokens per step, losses), timing tune's own train step."""
    from tune.testing import run
    from tune.train import loop

    stamps, tokens = [], []
    original = loop.train_step

    def timed(session, group):
        out = original(session, group)
        stamps.append(time.perf_counter())
        tokens.append(out.tokens)
        return out

    loop.train_step = timed
    start = time.perf_counter()
    run(path, overwrite=True)
    from tune.testing import train_losses

    return [start, *stamps], tokens, train_losses(path.parent / "run")


def run_trainer(path: Path, steps: int, opts: dict) -> tuple[list[float], list[int], list[float]]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )
    from tune.testing import load_recipe, tokenize

    rec = load_recipe(path)
    examples = tokenize(rec).train
    n = steps * MICRO
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples[:n]]
    kwargs = {}
    if opts.get("qlora"):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    model = AutoModelForCausalLM.from_pretrained(rec.model.path, dtype=torch.float32, **kwargs)
    if opts.get("qlora"):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # opts["lora"]: LoraConfig keys instead of all-linear (e.g. a MoE model's target_parameters)
    targets = opts.get("lora") or {"target_modules": "all-linear"}
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, **targets)
    set_seed(rec.train.seed)  # just before the adapter is built, as tune seeds its init
    model = get_peft_model(model, lora)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rec.model.path)
    if opts.get("flatten"):
        collator = DataCollatorWithFlattening()
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    stamps: list[float] = []
    losses: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = TrainingArguments(
        output_dir=str(path.parent / "trainer"),
        per_device_train_batch_size=MICRO,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        train_sampling_strategy="sequential",
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collator,
        callbacks=[Stamp()],
    )
    start = time.perf_counter()
    trainer.train()
    tokens = [
        sum(len(r["input_ids"]) for r in rows[i * MICRO : (i + 1) * MICRO]) for i in range(steps)
    ]
    return [start, *stamps], tokens, losses


def side_environment(side: str, opts: dict) -> dict[str, str]:
    """The environment a side starts with: `tune run`'s for tune (unless the case swaps it),
    this process's own for Trainer (unless the case gives it tune's)."""
    from tune.machine.hostmem import OPT_OUT, tuned_environment

    plain = {k: v for k, v in os.environ.items() if k != OPT_OUT}
    if opts.get("malloc") == "system":
        return plain
    if side == "tune":
        return tuned_environment(plain) or plain
    if opts.get("malloc") == "tuned":
        return tuned_environment({**plain, OPT_OUT: "tuned"}) or plain
    return plain


def child(side: str, case: str, work: Path, model_dir: Path, steps: int, warmup: int) -> dict:
    from tune.machine.hostmem import describe as describe_host_malloc

    opts = next(o for s, o in CASES[case] if s == side)
    path = recipe(work, model_dir, steps, opts)
    if side == "tune":
        stamps, tokens, losses = run_tune(path)
    else:
        stamps, tokens, losses = run_trainer(path, steps, opts)
    timed = stamps[warmup:]
    step_s = [b - a for a, b in zip(timed, timed[1:], strict=False)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "side": side,
        "case": case,
        "options": opts,
        "steps": steps,
        "warmup": warmup,
        "tokens_per_step": tokens,
        "step_s": [round(s, 3) for s in step_s],
        "first_step_s": round(stamps[1] - stamps[0], 3) if len(stamps) > 1 else None,
        "tokens_per_s": round(sum(tokens[warmup:]) / max(sum(step_s), 1e-9), 1),
        "peak_rss_gb": round(rss / 2**30, 3),
        "host_allocator": describe_host_malloc(),
        "losses": [round(x, 4) for x in losses],
    }


# -- tune's own per-step overhead on the quickstart ----------------------------------------------
def overhead(work: Path, steps: int, log_every: int) -> dict:
    """Timer breakdown of the quickstart's steps: the model's work (objective forward, backward,
    clipping + optimizer step) against the whole loop iteration (data, collation, device moves,
    counting, scheduler, logging, metrics, progress). Eval and checkpoints are off: they are
    not per-step work."""
    import tomllib
    from tune.builtin.objective import CausalLM
    from tune.contract.strategy import Strategy
    from tune.recipe import dump_toml
    from tune.testing import run
    from tune.train.batches import Batches

    data = tomllib.loads((REPO / "recipes/quickstart.toml").read_text(encoding="utf-8"))
    data["data"]["train"] = str(REPO / "recipes" / data["data"]["train"])
    data["data"]["eval"] = str(REPO / "recipes" / data["data"]["eval"])
    data["train"].update(
        output_dir=str(work / "run"),
        max_steps=steps,
        eval_every=0,
        save_every=0,
        log_every=log_every,
    )
    data["eval"]["metrics"] = []
    data.pop("generate", None)
    path = work / "quickstart.toml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(data), encoding="utf-8")
    model_s, starts = [0.0], []

    def timed(fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                model_s[0] += time.perf_counter() - t

        return wrapper

    def next_group(fn):
        def wrapper(self, state):
            starts.append((time.perf_counter(), model_s[0]))
            return fn(self, state)

        return wrapper

    CausalLM.loss = timed(CausalLM.loss)
    Strategy.backward = timed(Strategy.backward)
    Strategy.step = timed(Strategy.step)
    Batches.next_group = next_group(Batches.next_group)
    run(path, overwrite=True)
    (t0, m0), (t1, m1) = starts[1], starts[-1]  # from step 2's start to the last step's start
    wall, model = t1 - t0, m1 - m0
    return {
        "recipe": "recipes/quickstart.toml (eval, checkpoints and samples off)",
        "steps_timed": len(starts) - 2,
        "log_every": log_every,
        "step_ms": round(1000 * wall / (len(starts) - 2), 2),
        "model_ms": round(1000 * model / (len(starts) - 2), 2),
        "overhead_pct": round(100 * (1 - model / wall), 2),
    }


# -- report -----------------------------------------------------------------------------------------
def malloc_label(described: str) -> str:
    if "tcache and fastbins off" in described:
        return "tcache+fastbins off"
    return "glibc defaults" if described.startswith("glibc defaults") else described or "-"


def table(results: list[dict]) -> str:
    by = {(r["case"], r["side"]): r for r in results}
    base = by.get(("padded", "trainer"))
    lines = [
        "| case | side | tokens/s | vs Trainer padded | vs Trainer same case | peak RSS GiB | "
        "vs Trainer padded | vs Trainer same case | step s | host malloc | first losses |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]

    def ratio(a: float, b: dict | None, key: str) -> str:
        return f"{a / b[key]:.2f}x" if b and b.get(key) else "-"

    for r in results:
        same = by.get((r["case"], "trainer"))
        step = sum(r["step_s"]) / max(len(r["step_s"]), 1)
        lines.append(
            f"| {r['case']} {r['options'] or ''} | {r['side']} | {r['tokens_per_s']:,.0f} | "
            f"{ratio(r['tokens_per_s'], base, 'tokens_per_s')} | "
            f"{ratio(r['tokens_per_s'], same, 'tokens_per_s')} | {r['peak_rss_gb']:.2f} | "
            f"{ratio(r['peak_rss_gb'], base, 'peak_rss_gb')} | "
            f"{ratio(r['peak_rss_gb'], same, 'peak_rss_gb')} | {step:.1f} | "
            f"{malloc_label(r.get('host_allocator', ''))} | "
            f"{', '.join(f'{x:.3f}' for x in r['losses'][:3])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cases", default=",".join(ORDER))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tune-vs-trainer"))
    parser.add_argument("--overhead", action="store_true", help="quickstart step overhead")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    work = Path(args.work)
    if args.overhead:
        write_overhead([overhead(work / f"qs-{n}", args.steps, n) for n in (20, 1)], Path(args.out))
        return
    if args.child:
        side, case = args.child
        model_dir = work / "smollm2-135m-random"
        result = child(side, case, work / f"{case}-{side}", model_dir, args.steps, args.warmup)
        print("RESULT " + json.dumps(result), flush=True)
        return
    work.mkdir(parents=True, exist_ok=True)
    build_model_dir(work)
    results = []
    cmd_base = [sys.executable, __file__, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for case in args.cases.split(","):
        for side, _ in CASES[case]:
            (work / f"{case}-{side}").mkdir(parents=True, exist_ok=True)
            cmd = [*cmd_base, "--work", str(work), "--child", side, case]
            print(f"== {case} / {side}", flush=True)
            env = side_environment(side, next(o for s, o in CASES[case] if s == side))
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
            found = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not found:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{case}/{side} failed")
            results.append(json.loads(found[-1][len("RESULT ") :]))
            r = results[-1]
            print(
                f"   {r['tokens_per_s']:,.0f} tok/s  peak RSS {r['peak_rss_gb']:.2f} GB", flush=True
            )
            write(results, args, Path(args.out))  # after every side: a cut-short run still reports
            if (case, side) == ("chat512", "tune"):
                r["estimate"] = estimate_against(work / f"{case}-{side}", r, env)
                write(results, args, Path(args.out))


def estimate_against(work: Path, measured: dict, env: dict[str, str]) -> dict:
    """`tune estimate` of the case's recipe against its measured peak RSS less the RSS of an
    idle process that imported the same libraries (what the estimate does not count)."""
    code = "import tune.cli.estimate; from tune.cli import main; main()"
    out = subprocess.run(
        [sys.executable, "-c", code, "estimate", str(work / "recipe.toml"), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    if out.returncode not in (0, 1):
        raise SystemExit(f"tune estimate failed: {out.stderr[-2000:]}")
    predicted = json.loads(out.stdout)
    idle = (
        "import resource, torch, transformers, peft, datasets, tune.train.run, tune.builtin.loader;"
        "from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    base = int(
        subprocess.run(
            [sys.executable, "-c", idle], capture_output=True, text=True, cwd=REPO, env=env
        ).stdout.split()[-1]
    )
    held = measured["peak_rss_gb"] * 2**30 - base
    return {
        "estimate_bytes": predicted["peak_bytes"],
        "baseline_bytes": base,
        "measured_less_baseline_bytes": int(held),
        "error": round((predicted["peak_bytes"] - held) / held, 4),
        "terms": predicted.get("terms", predicted.get("rows")),
    }


def write(results: list[dict], args, out: Path) -> None:
    import peft
    import torch
    import transformers
    from tune import __version__

    date = datetime.date.today().isoformat()
    meta = {
        "date": date,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tune": __version__,
        "threads": torch.get_num_threads(),
        "command": "python bench/vs_trainer.py " + " ".join(sys.argv[1:]),
        "model": "random-init SmolLM2-135M config " + json.dumps(SMOLLM2_135M),
        "work": f"LoRA r8 all-linear, fp32, micro-batch {MICRO}, max_seq_len {SEQ}, "
        f"{args.steps} steps ({args.warmup} warm-up not timed), alpaca_en_demo",
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"vs-trainer-{date}"
    stem.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8"
    )
    md = [f"# tune vs transformers Trainer + PEFT ({date})", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    md += [
        "",
        "Each row is one side in its own process; ratios are against Trainer + PEFT padded "
        "and against Trainer in the same case, measured in this one run.",
    ]
    md += ["", table(results), ""]
    for r in results:
        if r.get("estimate"):
            e = r["estimate"]
            md += [
                f"`tune estimate` for {r['case']} / {r['side']}: {e['estimate_bytes'] / 2**20:,.0f}"
                f" MiB against {e['measured_less_baseline_bytes'] / 2**20:,.0f} MiB measured "
                f"(peak RSS less {e['baseline_bytes'] / 2**20:,.0f} MiB of an idle process with "
                f"the same imports): {100 * e['error']:+.1f}%.",
                "",
            ]
    stem.with_suffix(".md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md))


def write_overhead(rows: list[dict], out: Path) -> None:
    import torch

    date = datetime.date.today().isoformat()
    meta = {
        "date": date,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "command": "python bench/vs_trainer.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(rows), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"step-overhead-{date}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    md = [f"# tune's per-step overhead on the quickstart ({date})", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    md += [
        "",
        "model = objective forward + backward + clipping and optimizer step; overhead = the rest "
        "of each loop iteration (next micro-batches, collation, device moves, target counts, "
        "scheduler, logging, metrics, progress).",
        "",
        "| log_every | steps timed | step ms | model ms | overhead |",
        "|---:|---:|---:|---:|---:|",
    ]
    md += [
        f"| {r['log_every']} | {r['steps_timed']} | {r['step_ms']} | {r['model_ms']} | "
        f"{r['overhead_pct']}% |"
        for r in rows
    ]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
