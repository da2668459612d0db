"""Export fidelity, sizes and times: a quickstart run as GGUF, read back by transformers.

    python plugins/gguf/bench_export.py [RUN_DIR]   # default: a shortened quickstart (80 steps)

For each quant: `tune export` wall time (the command, imports included) and the conversion
alone, the file size, the largest |logit difference| against the trained fp32 model over the
quickstart's eval prompts, and whether greedy generations (12 tokens) are identical. Results
go to plugins/gguf/bench_export.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUANTS = ["f32", "f16", "bf16", "q8_0"]
PROMPTS = ["reverse hello", "reverse world", "reverse tune", "reverse export", "reverse gguf"]


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tune_plugin_gguf.write import write_gguf

    tmp = Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else tmp / "qs"
    if len(sys.argv) == 1:
        subprocess.run(
            [sys.executable, "-m", "tune", "run", str(REPO / "recipes/quickstart.toml"),
             "-o", f"train.output_dir={run}", "-o", "train.max_steps=80",
             "-o", "train.micro_batch_size=8", "-o", "scheduler.warmup_steps=5",
             "-o", "train.eval_every=0", "-o", "train.save_every=0"],
            check=True, capture_output=True,
        )  # fmt: skip
    final = run / "final"
    ref = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(final))

    def prompt_ids(p):
        text = tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        return tok(text, return_tensors="pt").input_ids

    def greedy(model, ids):
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        return out[0, ids.shape[1] :].tolist()

    rows = []
    for quant in QUANTS:
        out = tmp / f"qs-{quant}.gguf"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tune", "export", str(run), "--format", "gguf",
             "--quant", quant, "--out", str(out)],
            check=True, capture_output=True,
        )  # fmt: skip
        command_s = time.perf_counter() - start
        start = time.perf_counter()
        write_gguf(final, tmp / f"again-{quant}.gguf", quant, name="qs")
        convert_s = time.perf_counter() - start
        model = AutoModelForCausalLM.from_pretrained(
            str(tmp), gguf_file=out.name, dtype=torch.float32
        ).eval()
        diff, same = 0.0, 0
        for p in PROMPTS:
            ids = prompt_ids(p)
            with torch.no_grad():
                diff = max(diff, (model(ids).logits - ref(ids).logits).abs().max().item())
            same += greedy(model, ids) == greedy(ref, ids)
        scale = max(ref(prompt_ids(p)).logits.abs().max().item() for p in PROMPTS)
        rows.append((quant, out.stat().st_size, command_s, convert_s, diff, scale, same))
    sample = tok.decode(greedy(ref, prompt_ids(PROMPTS[0])), skip_special_tokens=True)
    lines = [
        f"GGUF export of a quickstart run ({run.name}: tiny Llama, "
        f"{sum(p.numel() for p in ref.parameters()) / 1e6:.2f}M parameters); "
        f"sample: 'reverse hello' -> {sample!r}",
        "",
        "| quant | file | `tune export` s | convert s | max abs logit diff | max abs logit "
        "| greedy same |",
        "|---|---|---|---|---|---|---|",
    ]
    for quant, size, command_s, convert_s, diff, scale, same in rows:
        lines.append(
            f"| {quant} | {size / 2**20:.2f} MiB | {command_s:.1f} | {convert_s:.2f} | "
            f"{diff:.2e} | {scale:.1f} | {same}/{len(PROMPTS)} |"
        )
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "bench_export.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
