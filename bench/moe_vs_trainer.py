"""A LoRA step on a mixture-of-experts model: tune vs transformers Trainer + PEFT, CPU.

Model: random init, Qwen3-MoE-shaped and wide for its depth (hidden 512, 4 layers, 8 heads /
2 KV heads, 32 experts of width 256, 4 picked per token, vocab 49,152, router loss on with
coefficient 0.001), built in code; the BPE tokenizer of bench/vs_trainer.py (trained in code on
the data). Data: real chat rows (../shared/data/alpaca_en_demo.json as user/assistant turns),
tokenized once by tune (chatml, prompt masked), the same examples in the same order for both.
Both sides: LoRA r8 (alpha 16) on attention (q/k/v/o) and on the fused experts (PEFT's
`target_parameters`: mlp.experts.gate_up_proj and down_proj), router frozen, AdamW lr 2e-4,
constant schedule, fp32, padded micro-batches of 4, max_seq_len 512, no checkpointing.

Each side runs in its own subprocess (peak RSS is that side's alone), as its tool starts
(vs_trainer.side_environment). Tokens/s counts real tokens over the steps after `--warmup`;
per-step losses are printed so the two can be seen to do the same work (router loss included).

    python bench/moe_vs_trainer.py [--steps 4] [--warmup 1] [--experts-impl grouped_mm]

Writes bench/results/moe-vs-trainer-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import vs_trainer  # noqa: E402 - the shared tokenizer, data and side environments

MOE = {
    "model_type": "qwen3_moe",
    "hidden_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 1024,
    "moe_intermediate_size": 256,
    "num_experts": 32,
    "num_experts_per_tok": 4,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
    "output_router_logits": True,
    "router_aux_loss_coef": 0.001,
}
SEQ, MICRO, LR = 512, 4, 2e-4
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def build_model_dir(work: Path) -> Path:
    target = work / "qwen3-moe-wide-random"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vs_trainer.build_model_dir(work))
    config = AutoConfig.for_model(
        **MOE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def recipe(work: Path, model_dir: Path, steps: int) -> Path:
    from tune.testing import recipe_dict, write_recipe

    work.mkdir(parents=True, exist_ok=True)
    data = recipe_dict(
        work,
        model={"path": str(model_dir), "max_seq_len": SEQ},
        data={
            "format": "chat",
            "train": str(vs_trainer.chat_rows(work.parent)),
            "template": "chatml",
            "shuffle": False,
        },
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        optimizer={"name": "adamw", "lr": LR, "weight_decay": 0.0},
        train={
            "output_dir": str(work / "run"),
            "max_steps": steps,
            "micro_batch_size": MICRO,
            "save_every": 0,
        },
    )
    return write_recipe(work, data)


def child(side: str, work: Path, model_dir: Path, steps: int, warmup: int) -> dict:
    path = recipe(work, model_dir, steps)
    if side == "tune":
        stamps, tokens, losses = vs_trainer.run_tune(path)
    else:
        lora = {"target_modules": ATTENTION, "target_parameters": EXPERTS}
        stamps, tokens, losses = vs_trainer.run_trainer(path, steps, {"lora": lora})
    timed = stamps[warmup:]
    step_s = [b - a for a, b in zip(timed, timed[1:], strict=False)]
    return {
        "side": side,
        "tokens_per_step": tokens,
        "step_s": [round(s, 3) for s in step_s],
        "tokens_per_s": round(sum(tokens[warmup:]) / max(sum(step_s), 1e-9), 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "losses": [round(x, 5) for x in losses],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tune-moe-bench"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    work = Path(args.work)
    model_dir = work / "qwen3-moe-wide-random"
    if args.child:
        result = child(args.child, work / args.child, model_dir, args.steps, args.warmup)
        print("RESULT " + json.dumps(result), flush=True)
        return
    work.mkdir(parents=True, exist_ok=True)
    build_model_dir(work)
    results = []
    for side in ("tune", "trainer"):
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--work", str(work), "--child", side]
        env = vs_trainer.side_environment(side, {})
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{side} failed:\n{res.stderr[-3000:]}")
        results.append(json.loads(line.removeprefix("RESULT ")))
        print(results[-1], flush=True)
    write(results, args, Path(args.out))


def write(results: list[dict], args, out: Path) -> None:
    tune, trainer = results
    date = datetime.date.today().isoformat()
    meta = {
        "date": date,
        "machine": f"{platform.processor() or platform.machine()}, CPU only",
        "command": f"python bench/moe_vs_trainer.py --steps {args.steps} --warmup {args.warmup}",
        "model": MOE,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"moe-vs-trainer-{date}.json").write_text(
        json.dumps({**meta, "results": results}, indent=1), encoding="utf-8"
    )
    speed = tune["tokens_per_s"] / trainer["tokens_per_s"]
    memory = tune["peak_rss_gb"] / trainer["peak_rss_gb"]
    worst = max(abs(a - b) for a, b in zip(tune["losses"], trainer["losses"], strict=False))
    lines = [
        f"# MoE LoRA step: tune vs Trainer + PEFT ({date})",
        "",
        f"`{meta['command']}` on {meta['machine']}; model and work in the script's docstring.",
        "",
        "| side | tokens/s | peak RSS GiB | step s | losses |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        step = sum(r["step_s"]) / max(len(r["step_s"]), 1)
        losses = ", ".join(f"{x:.4f}" for x in r["losses"])
        lines.append(
            f"| {r['side']} | {r['tokens_per_s']:,.0f} | {r['peak_rss_gb']:.2f} | {step:.2f} | "
            f"{losses} |"
        )
    lines += [
        "",
        f"tune / Trainer: **{speed:.2f}x tokens/s, {memory:.2f}x peak RSS**; largest per-step "
        f"loss difference {worst:.1e} (router loss included on both sides).",
    ]
    (out / f"moe-vs-trainer-{date}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
