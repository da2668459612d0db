"""What `[train] lean_activations` costs and saves: step time and saved activations, on and off.

The SmolLM2-135M-shaped model of bench/vs_trainer.py (random init, 30 layers, LoRA r8 on all
linear layers, fp32, CPU), one micro-batch of 4 x 512 tokens. The two settings alternate in one
process, `--rounds` times each, so machine load hits both alike; reported: the median
forward+backward time of each, the bytes autograd saved for backward (parameters excluded),
and the largest difference between the two settings' gradients.

    python bench/lean_activations.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vs_trainer import SMOLLM2_135M  # noqa: E402


def build():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M, pad_token_id=0))
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))


def step(model, batch, lean: bool) -> tuple[float, int, list[torch.Tensor]]:
    from tune.train.lean import apply_lean_activations, remove_lean_activations

    (apply_lean_activations if lean else remove_lean_activations)(model)
    model.zero_grad(set_to_none=True)
    saved: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = model.base_model.model.model(**batch).last_hidden_state
    (hidden.float().pow(2).mean()).backward()
    seconds = time.perf_counter() - start
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return seconds, sum(saved.values()), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    model = build()
    ids = torch.randint(5, 40000, (4, 512), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, length in enumerate((512, 400, 300, 200)):  # padded rows, as a batch of alpaca
        mask[row, length:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    times: dict[bool, list[float]] = {False: [], True: []}
    saved, grads = {}, {}
    step(model, batch, False)  # warm-up
    for _ in range(args.rounds):
        for lean in (False, True):
            seconds, saved[lean], grads[lean] = step(model, batch, lean)
            times[lean].append(seconds)
    diff = max(float((a - b).abs().max()) for a, b in zip(grads[False], grads[True], strict=True))
    med = {lean: statistics.median(t) for lean, t in times.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
        "command": "python bench/lean_activations.py " + " ".join(sys.argv[1:]),
        "median_step_s": {"off": med[False], "on": med[True]},
        "step_time_ratio_on_over_off": med[True] / med[False],
        "saved_activation_mib": {"off": saved[False] / 2**20, "on": saved[True] / 2**20},
        "max_grad_diff": diff,
        "times": {"off": times[False], "on": times[True]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"lean-activations-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# `[train] lean_activations`: cost and saving, {result['date']}",
        "",
        f"`{result['command']}` on {result['machine']}, torch {torch.__version__}. SmolLM2-135M "
        "shape, random init, LoRA r8 all-linear, fp32, one micro-batch of 4 x 512 (rows of "
        f"512/400/300/200 real tokens); {args.rounds} alternating rounds, median.",
        "",
        "| lean_activations | fwd+bwd s (median) | saved activations MiB |",
        "|---|---:|---:|",
        f"| off | {med[False]:.2f} | {saved[False] / 2**20:,.0f} |",
        f"| on | {med[True]:.2f} | {saved[True] / 2**20:,.0f} |",
        "",
        f"On/off step time: {med[True] / med[False]:.3f}x; saved activations: "
        f"{saved[True] / saved[False]:.2f}x; largest gradient difference: {diff:.1e}.",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
