"""`tune export --verify` measured: each quant of two models checked in llama.cpp on CPU.

    python plugins/gguf/bench_verify.py            # writes plugins/gguf/bench_verify.md

Models: (1) a quickstart run (tiny Llama, the quickstart shortened to 80 steps), (2) a LoRA run
(4 steps) on a random-init model of SmolLM2-135M's full shape (30 layers, 49,152 vocabulary)
with a SmolLM2-style tokenizer (the tests' builder, tests/conftest.py). For each quant, the
command users run, `tune export RUN --format gguf --quant Q --out F --verify` (adapters merged
in bf16; k-quants made by llama.cpp's quantizer from tune's f16): its wall time and its table
(top-1 agreement, KL(transformers || llama.cpp), max |logit difference| over 4 prompts of the
run's data, greedy continuations, every check); then llama.cpp's speed on this CPU: prompt
processing (256 tokens) and generation (64 tokens, greedy), tokens/s.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
QUANTS = ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"]
LOGITS = re.compile(
    r"top-1 ([\d.]+)% of (\d+) positions, KL ([\d.e+-]+), max \|diff\| ([\d.e+-]+)"
    r"(?:, top-1 up to near-ties ([\d.]+)%)?"
)
GREEDY = re.compile(r"greedy (?:ok|FAIL|info) (\d+ of \d+ prompts identical \(\d+ of \d+ tokens)")


def tune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tune", *args], capture_output=True, text=True, check=False
    )


def quickstart(work: Path) -> Path:
    run = work / "qs"
    done = tune(
        "run", str(REPO / "recipes/quickstart.toml"), "-o", f"train.output_dir={run}",
        "-o", "train.max_steps=80", "-o", "train.micro_batch_size=8",
        "-o", "scheduler.warmup_steps=5", "-o", "train.eval_every=0", "-o", "train.save_every=0",
        # absolute, so the saved recipe finds the data again (verify reads its prompts there)
        "-o", f"data.train={REPO / 'recipes/data/reverse-words.jsonl'}",
        "-o", f"data.eval={REPO / 'recipes/data/reverse-words-eval.jsonl'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run


def smollm2_lora(work: Path) -> Path:
    from tune.testing import recipe_dict, write_recipe

    spec = importlib.util.spec_from_file_location("gguf_tests", HERE / "tests" / "conftest.py")
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    base = tests.smollm2_shaped(work / "smol-base", layers=30)
    data = recipe_dict(
        work,
        model={"path": str(base), "max_seq_len": 128},
        data={"template": "chatml"},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        train={"max_steps": 4, "output_dir": str(work / "smol")},
    )
    done = tune("run", str(write_recipe(work, data, "smol.toml")))
    assert done.returncode == 0, done.stderr
    return work / "smol"


def speed(path: Path) -> tuple[float, float]:
    """(prompt tokens/s over 256 tokens, generated tokens/s over 64) in llama.cpp, CPU."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, verbose=False)
    prompt = [(i * 7919) % 200 + 10 for i in range(256)]
    start = time.perf_counter()
    llm.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - start)
    llm.reset()
    start = time.perf_counter()
    for n, _token in enumerate(llm.generate(prompt[:16], top_k=1, temp=0.0), 1):
        if n == 64:
            break
    tg = 64 / (time.perf_counter() - start)
    llm.close()
    return pp, tg


def bench(name: str, run: Path, work: Path, lines: list[str]) -> None:
    lines += [
        f"### {name}",
        "",
        "| quant | file MiB | export + verify s | top-1 | KL | max abs diff | greedy | checks "
        "| prompt tok/s | gen tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pre = ""
    for quant in QUANTS:
        path = work / f"{name}-{quant}.gguf"
        start = time.perf_counter()
        done = tune("export", str(run), "--format", "gguf", "--quant", quant, "--out", str(path),
                    "--verify")  # fmt: skip
        seconds = time.perf_counter() - start
        text = " ".join(done.stdout.split())
        logits, greedy = LOGITS.search(text), GREEDY.search(text)
        pre = re.search(r"info \w+, tokenizer\.ggml\.pre = ([\w.-]+)", text)
        checks = "all pass" if done.returncode == 0 else "FAIL: " + done.stderr.strip()[-200:]
        pp, tg = speed(path)
        lines.append(
            f"| {quant} | {path.stat().st_size / 2**20:.1f} | {seconds:.0f} | {logits[1]}% "
            f"| {float(logits[3]):.2e} | {float(logits[4]):.3g} | {greedy[1]}) | {checks} "
            f"| {pp:.0f} | {tg:.0f} |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"tokenizer.ggml.pre = {pre[1] if pre else '?'}; {logits[2]} positions", ""]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="gguf-verify-"))
    lines = ["# `tune export --verify`: each quant in llama.cpp (llama-cpp-python 0.3.36, CPU)", ""]
    for name, make in (("quickstart", quickstart), ("smollm2-135m-shaped-lora", smollm2_lora)):
        bench(name, make(work), work, lines)
    lines += [
        "Measured on the shared 2-core CPU machine with other jobs running (speeds are a floor;",
        "the export column includes process start, merge, conversion, quantization and the",
        "verification). top-1 / KL / max abs diff: next-token logits at every position of 4",
        "prompts of the run's data against the trained model in transformers (fp32); KL in nats,",
        "mean over positions. greedy: 32-token greedy continuations. checks: tokenizer, chat",
        "template, end of turn, logits, greedy (tune_plugin_gguf/verify.py; limits in LIMITS).",
    ]
    (HERE / "bench_verify.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
