"""Peak memory and tokens/s of a GRPO step on CPU: tune (tune-plugin-rl) vs TRL's GRPOTrainer.

The same work on both sides: the same model folder (fp32, random init, built from its config
here), LoRA r8 (alpha 16, no dropout) on all linear layers, the same prompts in the same order,
`--prompts` prompts a step times G = `--generations` completions each, real sampling
(temperature 1, the policy's own `generate` with a KV cache on both sides), one optimizer step
per generation batch (num_iterations 1), loss_type dapo, beta 0 (no reference model), AdamW, no
gradient checkpointing (TRL's default is on: both off here, tune's default), and a python reward
of the decoded text (the same function on both sides).

Equal token counts: sampling could end a completion at EOS on one side and not the other. The
model folder makes EOS unreachable instead of changing either trainer: every embedding row gets
a constant first coordinate (+1; the embeddings are tied, so it is also the output head), EOS's
row -4. The residual stream carries that coordinate, so EOS's logit sits about 5 x (norm of the
hidden state's first coordinate) below every other token's and is never sampled: every
completion is exactly `--completion-len` tokens on both sides (checked: each side's
completions/min_length and max_length are reported). Prompts are random letters, one token each
with the byte-level tokenizer, so every prompt is `--prompt-len` tokens (BOS included) on both.

Shapes (`--shapes`):
  small    tune:tiny-llama's shape (hidden 128, 4 layers, 4 heads / 2 KV heads, vocab 266)
  smollm2  SmolLM2-135M's shape (hidden 576, 9 heads / 3 KV heads, intermediate 1536,
           vocab 49,152, tied) with `--layers` decoder layers (default 4; the real model has 30)
Both use tune's byte-level tiny tokenizer (ids above 265 decode to nothing).

Each side runs in a fresh process: tune as `python -m tune run <recipe>` (which re-executes
itself with its tuned glibc malloc settings, as every `tune run` does), TRL as this script's
`--child trl` with this process's environment (what a TRL user gets). Peak RSS is the child's
`ru_maxrss` from `os.wait4`. An idle process that imported the same libraries (in the same
environment) is each side's baseline; the ratio "above baseline" compares peak - baseline.
tokens/s = (generated + trained tokens) / wall time of the steps after `--warmup`: generated =
prompts x G x completion length; trained = prompts x G x (prompt + completion length), the
sequences of the training forward and backward. Step ends: tune's metrics.jsonl `time`, TRL's
`on_step_end`; model loading and the warm-up step are not timed.

    OMP_NUM_THREADS=1 python bench/grpo_vs_trl.py [--shapes small,smollm2] [--steps 3]

Writes bench/results/grpo-vs-trl-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from vs_trainer import SMOLLM2_135M  # noqa: E402

SMALL = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 266,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "initializer_range": 0.02,
}
LR = 1e-4
REWARD = '''def score(prompts, completions, **_):
    """A cheap deterministic reward of the text, varied within a group."""
    return [float(len(set(c)) % 7) + 0.01 * (sum(map(ord, c)) % 10) for c in completions]
'''
TUNE_IDLE = (
    "import resource, torch, transformers, peft, datasets, tune.train.run, tune.builtin.loader,"
    " tune_plugin_rl.objectives, tune_plugin_rl.rollout;"
    "from transformers import AutoModelForCausalLM, AutoTokenizer;"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
)
TRL_IDLE = (
    "import resource, torch, transformers, peft, datasets;"
    "from trl import GRPOConfig, GRPOTrainer;"
    "from transformers import AutoModelForCausalLM, AutoTokenizer;"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
)


# -- set-up (parent) ----------------------------------------------------------------------------
def write_model(target: Path, shape: dict) -> Path:
    """A random-init (seed 0) Llama of `shape`, tune's byte tokenizer, EOS made unreachable."""
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from tune.builtin.tiny import load_tokenizer

    tokenizer = load_tokenizer("tiny-llama")
    config = LlamaConfig(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # tied: the output head too
        emb[:, 0] = 1.0
        emb[tokenizer.eos_token_id, 0] = -4.0
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def prompt_texts(n: int, length: int) -> list[str]:
    """n prompts of `length` - 1 random letters (BOS makes `length` tokens)."""
    rng = random.Random(length)
    return ["".join(rng.choice("abcdefghijklmnop") for _ in range(length - 1)) for _ in range(n)]


def write_case(work: Path, model_dir: Path, args, steps: int) -> Path:
    """The tune recipe (and the files both sides read) of one shape."""
    from tune.testing import recipe_dict, write_jsonl, write_recipe

    work.mkdir(parents=True, exist_ok=True)
    (work / "rewards.py").write_text(REWARD, encoding="utf-8")
    rows = [{"prompt": p} for p in prompt_texts(steps * args.prompts, args.prompt_len)]
    data = write_jsonl(work / "prompts.jsonl", rows)
    recipe = recipe_dict(
        work,
        model={"path": str(model_dir), "max_seq_len": args.prompt_len + args.completion_len},
        data={"format": "prompt", "train": str(data), "chat": False, "shuffle": False},
        objective={
            "name": "grpo",
            "loss_type": "dapo",
            "num_generations": args.generations,
            "max_completion_length": args.completion_len,
            "temperature": 1.0,
            "beta": 0.0,
            "mask_truncated_completions": False,
        },
        reward=[{"name": "python", "function": "rewards.py:score"}],
        rollout={"name": "transformers"},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "targets": "all-linear"}],
        optimizer={"name": "adamw", "lr": LR, "weight_decay": 0.0},
        scheduler={"name": "constant"},
        train={
            "output_dir": str(work / "run"),
            "max_steps": steps,
            "micro_batch_size": args.prompts,
            "grad_accum": 1,
            "precision": "fp32",
            "gradient_checkpointing": False,
            "log_every": 1,
            "save_every": 0,
            "seed": 1,
        },
    )
    recipe["data"].pop("template", None)
    recipe["eval"] = {"metrics": []}
    recipe["data"].pop("eval", None)
    return write_recipe(work, recipe)


def measure(cmd: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    """Run `cmd` as a fresh process: (peak RSS bytes from wait4, stdout, stderr, seconds)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    seconds = time.perf_counter() - start
    if proc.returncode:
        print(stdout[-3000:], stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{cmd[:4]} exited {proc.returncode}")
    return usage.ru_maxrss * 1024, stdout, stderr, seconds


def tune_env() -> dict[str, str]:
    """The environment `tune run` re-executes itself with (for the idle baseline: the run gets
    it anyway)."""
    from tune.machine.hostmem import tuned_environment

    return tuned_environment(dict(os.environ)) or dict(os.environ)


def idle(code: str, env: dict[str, str]) -> int:
    return int(measure([sys.executable, "-c", code], env)[1].split()[-1])


def run_tune(recipe: Path) -> dict:
    cmd = [sys.executable, "-m", "tune", "run", str(recipe), "--overwrite"]
    peak, _, _, seconds = measure(cmd, tune_env())
    lines = (recipe.parent / "run" / "metrics.jsonl").read_text().splitlines()
    train = [r for r in map(json.loads, lines) if r.get("kind") == "train"]
    return {
        "peak_rss_bytes": peak,
        "process_s": round(seconds, 1),
        "stamps": [r["time"] for r in train],
        "losses": [r.get("loss") for r in train],
        "completion_lengths": [
            [r.get(f"completions/{k}_length") for k in ("min", "mean", "max")] for r in train
        ],
    }


def run_trl(recipe: Path, args, steps: int, tuned: bool = False) -> dict:
    """TRL in a fresh process: this process's environment (glibc's malloc defaults), or with
    `tuned` the one `tune run` gives itself (what of the memory gap the allocator explains)."""
    cmd = [sys.executable, __file__, "--child", str(recipe), "--steps", str(steps)]
    cmd += ["--generations", str(args.generations), "--prompts", str(args.prompts)]
    cmd += ["--completion-len", str(args.completion_len)]
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    peak, out, _, seconds = measure(cmd, tune_env() if tuned else plain)
    found = [json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT ")]
    return {"peak_rss_bytes": peak, "process_s": round(seconds, 1), **found[-1]}


# -- the TRL side (child process) ---------------------------------------------------------------
def trl_child(recipe_path: Path, args) -> None:
    import importlib.util

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from trl import GRPOConfig, GRPOTrainer
    from tune.testing import load_recipe

    recipe = load_recipe(recipe_path)
    work = recipe_path.parent
    spec = importlib.util.spec_from_file_location("bench_rewards", work / "rewards.py")
    rewards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewards)
    rows = [json.loads(x) for x in (work / "prompts.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.path)
    # tune renders a plain prompt as BOS + text (chat = false); TRL tokenizes the text as given
    prompts = [tokenizer.bos_token + r["prompt"] for r in rows]
    set_seed(1)
    model = AutoModelForCausalLM.from_pretrained(recipe.model.path, dtype=torch.float32)
    stamps: list[float] = []
    records: list[dict] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            stamps.append(time.time())

        def on_log(self, a, state, control, logs=None, **kwargs):
            records.append(dict(logs or {}))

    config = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=args.prompts * args.generations,
        gradient_accumulation_steps=1,
        num_generations=args.generations,
        max_completion_length=args.completion_len,
        temperature=1.0,
        num_iterations=1,
        loss_type="dapo",
        beta=0.0,
        mask_truncated_completions=False,
        max_steps=args.steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch",
        gradient_checkpointing=False,
        shuffle_dataset=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=1,
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[rewards.score],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Stamp()],
    )
    trainer.train()
    train_logs = [g for g in records if "loss" in g]
    print(
        "RESULT "
        + json.dumps(
            {
                "stamps": stamps,
                "losses": [g.get("loss") for g in train_logs],
                "completion_lengths": [
                    [g.get(f"completions/{k}_length") for k in ("min", "mean", "max")]
                    for g in train_logs
                ],
                "prompt_tokens": len(tokenizer(prompts[0])["input_ids"]),
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


# -- report -------------------------------------------------------------------------------------
def rate(stamps: list[float], per_step: int, warmup: int) -> float:
    """Tokens/s over the steps after `warmup` (step i ends at stamps[i])."""
    timed = len(stamps) - warmup - 1
    return per_step * timed / (stamps[-1] - stamps[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,smollm2")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of smollm2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start")
    parser.add_argument("--prompts", type=int, default=2, help="prompts a step")
    parser.add_argument("--generations", type=int, default=8, help="G, completions a prompt")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side (medians)")
    parser.add_argument(
        "--no-malloc-swap",
        dest="malloc_swap",
        action="store_false",
        help="skip the TRL run with tune's malloc settings",
    )
    parser.add_argument("--work", default=None, help="folder for models and runs (default: tmp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        trl_child(Path(args.child), args)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    import trl

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    work = Path(args.work or tempfile.mkdtemp(prefix="grpo-vs-trl-"))
    baselines = {
        "tune": idle(TUNE_IDLE, tune_env()),
        "trl": idle(TRL_IDLE, {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}),
        "trl_tuned_malloc": idle(TRL_IDLE, tune_env()),
    }
    per_seq = args.prompt_len + args.completion_len
    seqs = args.prompts * args.generations
    tokens = {"generated": seqs * args.completion_len, "trained": seqs * per_seq}
    per_step = tokens["generated"] + tokens["trained"]
    results = []
    for n, shape_name in enumerate(args.shapes.split(",")):
        shape = (
            SMALL if shape_name == "small" else {**SMOLLM2_135M, "num_hidden_layers": args.layers}
        )
        model_dir = write_model(work / f"model-{shape_name}", shape)
        recipe = write_case(work / shape_name, model_dir, args, args.steps)
        sides = {
            "tune": lambda r=recipe: run_tune(r),
            "trl": lambda r=recipe: run_trl(r, args, args.steps),
            "trl_tuned_malloc": lambda r=recipe: run_trl(r, args, args.steps, tuned=True),
        }
        row: dict = {"shape": shape_name, "config": shape, "runs": {}}
        for k in range(args.rounds):
            order = ["tune", "trl"] if (n + k) % 2 == 0 else ["trl", "tune"]
            if k == 0 and args.malloc_swap:
                order.append("trl_tuned_malloc")
            for side in order:
                got = sides[side]()
                got["round"] = k
                got["tokens_per_s"] = round(rate(got["stamps"], per_step, args.warmup), 1)
                got["baseline_bytes"] = baselines[side]
                got["above_baseline_bytes"] = got["peak_rss_bytes"] - baselines[side]
                row["runs"].setdefault(side, []).append(got)
                print(
                    f"{shape_name} round {k} {side}: peak {got['peak_rss_bytes'] / 2**20:,.0f} MiB "
                    f"({got['above_baseline_bytes'] / 2**20:,.0f} above idle), "
                    f"{got['tokens_per_s']:,.0f} tokens/s, completions "
                    f"{got['completion_lengths']}",
                    flush=True,
                )
        for side, runs in row["runs"].items():
            row[side] = {
                key: statistics.median(r[key] for r in runs)
                for key in ("peak_rss_bytes", "above_baseline_bytes", "tokens_per_s")
            }
            row[side]["completion_lengths"] = runs[-1]["completion_lengths"][-1]
        t, r = row["tune"], row["trl"]
        row["ratios"] = {
            "peak_rss": round(t["peak_rss_bytes"] / r["peak_rss_bytes"], 3),
            "peak_above_baseline": round(t["above_baseline_bytes"] / r["above_baseline_bytes"], 3),
            "tokens_per_s": round(t["tokens_per_s"] / r["tokens_per_s"], 3),
        }
        if "trl_tuned_malloc" in row:
            m = row["trl_tuned_malloc"]
            row["ratios_vs_trl_tuned_malloc"] = {
                "peak_rss": round(t["peak_rss_bytes"] / m["peak_rss_bytes"], 3),
                "peak_above_baseline": round(
                    t["above_baseline_bytes"] / m["above_baseline_bytes"], 3
                ),
                "tokens_per_s": round(t["tokens_per_s"] / m["tokens_per_s"], 3),
            }
        results.append(row)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "tune_plugin_rl": str(Path(importlib.util.find_spec("tune_plugin_rl").origin).parent),
        "work": {
            "prompts_per_step": args.prompts,
            "num_generations": args.generations,
            "prompt_tokens": args.prompt_len,
            "completion_tokens": args.completion_len,
            "steps": args.steps,
            "warmup_steps": args.warmup,
            "tokens_per_step": {**tokens, "total": per_step},
            "lora": "r8 alpha16 dropout0 all-linear",
            "precision": "fp32",
            "loss_type": "dapo",
            "beta": 0.0,
            "gradient_checkpointing": False,
            "rounds": args.rounds,
        },
        "baselines_bytes": baselines,
        "results": results,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.perf_counter() - started, 1),
        "command": "OMP_NUM_THREADS=1 python bench/grpo_vs_trl.py " + " ".join(sys.argv[1:]),
    }
    out = HERE / "results" / f"grpo-vs-trl-{result['date']}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


NOTES = """\
How each side computes the log-probs (read from the installed code): TRL 1.16's GRPOTrainer
always patches the policy with `add_fused_lm_head` (trl/trainer/utils.py), so its training
forward never builds the [rows, length, vocab] logits either: the LM head runs in tiles of up
to 4,096 tokens x 32,768 vocabulary entries (`_ChunkedLogProbFunction`, an online logsumexp,
the backward recomputing each tile), and it also computes the exact entropy of every position.
On CPU (no Triton) it scores every position of the sequence, prompt included, and masks
afterwards; with beta 0 and num_iterations 1 it runs no reference or old-policy forward. tune
takes the completion tokens' log-probs with the core's `token_logprobs` (`forward_nll`: the
chunked loss of every objective), and estimates the entropy from the sampled tokens' log-probs,
so no full-vocabulary distribution is built for it. Generation is transformers' `generate`
with a KV cache on both sides, from the LoRA-wrapped policy, the same batch of prompts x G
sequences.

Caveats: the environments differ as users get them: `tune run` re-executes itself with glibc
malloc tunables (tcache and fastbins off, tune.machine.hostmem), TRL runs with glibc's
defaults; the "TRL, tune's malloc" row runs TRL with tune's settings (first round only) and shows
how much of the memory gap is the allocator. Each side's baseline is an idle process with the
same imports in the same environment; "above idle" is peak RSS minus that. Rates are medians of
the rounds on a shared, loaded 2-core machine (one torch thread); per-round figures are in the
.json. Random-init weights: the rewards and losses mean nothing, only the work is the same. The
smollm2 shape has 4 of SmolLM2-135M's 30 layers and a byte-level tokenizer (266 entries) under
its 49,152-entry vocabulary, so its LM head is the same size as the real model's, while its
layers are fewer.
"""


def markdown(res: dict) -> str:
    w = res["work"]
    mib = 2**20
    base = res["baselines_bytes"]
    lines = [
        "# GRPO step on CPU: tune vs TRL GRPOTrainer, peak memory and tokens/s",
        "",
        f"One run of `{res['command']}` ({res['wall_s'] / 60:.1f} min); {res['machine']}; "
        f"torch {res['torch']}, transformers {res['transformers']}, trl {res['trl']}, "
        f"tune_plugin_rl from {res['tune_plugin_rl']}. "
        f"1-minute load average before / after: {res['load_average_1min'][0]} / "
        f"{res['load_average_1min'][1]} (shared machine).",
        "",
        f"Work per step: {w['prompts_per_step']} prompts x G = {w['num_generations']}, prompts "
        f"{w['prompt_tokens']} tokens, completions exactly {w['completion_tokens']} tokens "
        "(real sampling, EOS unreachable in the model), LoRA r8 all-linear, fp32, loss dapo, "
        f"beta 0, no gradient checkpointing; {w['steps']} steps, the first {w['warmup_steps']} "
        f"not timed; {w['rounds']} rounds per side, sides alternating, medians. Tokens a step: "
        f"{w['tokens_per_step']['generated']:,} generated + "
        f"{w['tokens_per_step']['trained']:,} trained = {w['tokens_per_step']['total']:,}. "
        "Shapes: small = tune:tiny-llama's (hidden 128, 4 layers, vocab 266); smollm2 = "
        "SmolLM2-135M's (hidden 576, 9/3 heads, vocab 49,152, tied) with "
        f"{res['results'][-1]['config'].get('num_hidden_layers')} layers.",
        f"Idle baselines (same imports, fresh process): tune {base['tune'] / mib:,.0f} MiB, "
        f"TRL {base['trl'] / mib:,.0f} MiB, TRL with tune's malloc "
        f"{base['trl_tuned_malloc'] / mib:,.0f} MiB.",
        "",
        "| shape | trainer | peak RSS MiB | above idle MiB | tokens/s | completion len min/mean/max "
        "(last step) |",
        "|---|---|---:|---:|---:|---|",
    ]
    names = (
        ("tune", "tune"),
        ("trl", "TRL GRPOTrainer"),
        ("trl_tuned_malloc", "TRL, tune's malloc (1 run)"),
    )
    for row in res["results"]:
        for side, name in names:
            if side not in row:
                continue
            s = row[side]
            lengths = "/".join(f"{x:g}" if x is not None else "?" for x in s["completion_lengths"])
            lines.append(
                f"| {row['shape']} | {name} | {s['peak_rss_bytes'] / mib:,.0f} | "
                f"{s['above_baseline_bytes'] / mib:,.0f} | {s['tokens_per_s']:,.0f} | {lengths} |"
            )
    lines += [
        "",
        "| shape | against | tune/TRL peak RSS | tune/TRL peak above idle (goal <= 0.7) | "
        "tune/TRL tokens/s (goal >= 1.0) |",
        "|---|---|---:|---:|---:|",
    ]
    for row in res["results"]:
        for key, name in (("ratios", "TRL"), ("ratios_vs_trl_tuned_malloc", "TRL, tune's malloc")):
            if key not in row:
                continue
            q = row[key]
            lines.append(
                f"| {row['shape']} | {name} | {q['peak_rss']:.2f} | "
                f"{q['peak_above_baseline']:.2f} | {q['tokens_per_s']:.2f} |"
            )
    lines += ["", NOTES]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
