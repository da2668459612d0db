"""`tune estimate` against measured peak host memory (CPU RSS) of real `tune run`s.

Builds a random-init Llama (~125M parameters, vocab 32000) once in a temp dir, then for each
case: writes a recipe, asks `tune estimate` for its per-device peak (host RAM on this CPU
machine), runs `tune run` in a fresh process (torchrun with 2 ranks for ZeRO-3) and reads each
rank's VmHWM, minus the VmHWM of an idle process that imports the same libraries (python + torch
+ transformers + tokenizers, plus peft / deepspeed / bitsandbytes where the case uses them).

    .venv/bin/python bench/estimate_vs_measured.py [--cases full-single,lora-single] [--json F]

Writes a markdown table to stdout (bench/results/estimate_vs_measured.md holds a committed run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
SEQ = 512
# name: (overrides, ranks, extra imports for the baseline)
CASES: dict[str, tuple[list[str], int, list[str]]] = {
    "full-single": ([], 1, []),
    "full-single-ckpt": (["train.gradient_checkpointing=true"], 1, []),
    "lora-single": (["adapt=lora"], 1, ["peft"]),
    "lora-single-ckpt": (["adapt=lora", "train.gradient_checkpointing=true"], 1, ["peft"]),
    "qlora-single": (["adapt=lora", "model.quantize=nf4"], 1, ["peft", "bitsandbytes"]),
    "full-zero3": (["strategy=zero3"], 2, ["deepspeed"]),
    "lora-zero3": (["adapt=lora", "strategy=zero3"], 2, ["peft", "deepspeed"]),
    "full-zero3-ckpt": (["strategy=zero3", "train.gradient_checkpointing=true"], 2, ["deepspeed"]),
    "full-fsdp": (["strategy=fsdp"], 2, []),
    "lora-fsdp": (["adapt=lora", "strategy=fsdp"], 2, ["peft"]),
}


def build_model(folder: Path) -> Path:
    """Random-init Llama saved as safetensors with the tiny byte-level tokenizer."""
    target = folder / "llama-bench"
    if (target / "config.json").exists():
        return target
    code = f"""
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from tune.builtin.tiny import load_tokenizer
tok = load_tokenizer("tiny-llama")
cfg = AutoConfig.for_model("llama", bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, **{CONFIG!r})
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
model.save_pretrained({str(target)!r})
tok.save_pretrained({str(target)!r})
print(sum(p.numel() for p in model.parameters()))
"""
    out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True)
    print(f"built {target}: {int(out.stdout.split()[-1]):,} parameters", file=sys.stderr)
    return target


def write_recipe(folder: Path, model: Path, name: str, overrides: list[str]) -> Path:
    """A text-format recipe whose every micro-batch is exactly micro_batch_size x SEQ tokens."""
    data = folder / "train.jsonl"
    if not data.exists():
        with data.open("w") as fh:
            for i in range(64):
                fh.write(json.dumps({"text": f"row {i} " + "the quick brown fox " * 60}) + "\n")
    adapt = "lora" if "adapt=lora" in overrides else None
    zero3 = "strategy=zero3" in overrides
    lines = [
        "[model]",
        f'path = "{model}"',
        f"max_seq_len = {SEQ}",
    ]
    if "model.quantize=nf4" in overrides:
        lines.append('quantize = "nf4"')
    if adapt:
        lines += ["[[adapt]]", 'method = "lora"', "r = 16", 'targets = "all-linear"']
    lines += ["[data]", 'format = "text"', f'train = "{data}"', "cache = false"]
    lines += ["[optimizer]", 'name = "adamw"', "lr = 1e-4"]
    if zero3:
        lines += ["[strategy]", 'name = "deepspeed"', "zero_stage = 3"]
    if "strategy=fsdp" in overrides:
        lines += ["[strategy]", 'name = "fsdp"']
    ckpt = "true" if "train.gradient_checkpointing=true" in overrides else "false"
    lines += [
        "[train]",
        f'output_dir = "{folder / ("run-" + name)}"',
        "max_steps = 2",
        "micro_batch_size = 2",
        'precision = "fp32"',
        f"gradient_checkpointing = {ckpt}",
        "chunked_loss = false",
        "save_every = 0",
        "[eval]",
        "metrics = []",
    ]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


HWM = """
import atexit, os, sys
def _hwm():
    if 'BENCH_HWM' not in os.environ or ('BENCH_RANKED' in os.environ and 'RANK' not in os.environ):
        return  # the torchrun launcher itself: not a rank
    out = os.environ['BENCH_HWM'] + '.' + os.environ.get('RANK', '0')
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            with open(out, 'w') as f:
                f.write(line.split()[1])
    names = sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in HEAVY
                    or m.startswith('tune_plugin_')})
    with open(out + '.modules', 'w') as f:
        f.write(' '.join(names))
HEAVY = {'torch', 'transformers', 'peft', 'deepspeed', 'bitsandbytes', 'accelerate',
         'datasets', 'tokenizers', 'safetensors', 'numpy', 'pandas', 'pyarrow', 'tune', 'rich'}
atexit.register(_hwm)
"""
# Every tensor over 64 KiB gets its own mapping and goes back to the OS when freed, so RSS
# follows live tensors (what the estimate predicts; max_memory_allocated on a GPU) instead of
# what glibc's heap keeps cached (reported apart, the "default malloc" column).
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _hwm_env(folder: Path, tag: str, malloc: bool = True) -> dict[str, str]:
    """An environment whose Python processes write their VmHWM (kB) at exit (sitecustomize)."""
    site = folder / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HWM)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    env["BENCH_HWM"] = str(folder / f"hwm-{tag}")
    env["OMP_NUM_THREADS"] = "1"
    if malloc:
        env.update(MALLOC)
    return env


def _read_hwm(folder: Path, tag: str, ranks: int) -> list[int]:
    return [int((folder / f"hwm-{tag}.{r}").read_text()) * 1024 for r in range(ranks)]


def baseline(folder: Path, name: str, malloc: bool = True) -> int:
    """VmHWM of an idle process importing the packages the run `name` had imported at exit."""
    mods = (folder / f"hwm-{name}.0.modules").read_text().split()
    code = "import " + ", ".join(mods)
    code += "; import tune.cli, torch.distributed"
    code += "; from transformers import AutoModelForCausalLM, AutoTokenizer"
    tag = f"base-{name}"
    env = _hwm_env(folder, tag, malloc)
    subprocess.run([PY, "-c", code], check=True, env=env, cwd=ROOT, capture_output=True)
    return _read_hwm(folder, tag, 1)[0]


def estimate(recipe: Path, ranks: int) -> tuple[int, dict]:
    # (`python -m tune estimate` once tune.cli imports the command by itself)
    code = "import tune.cli.estimate; from tune.cli import main; main()"
    out = subprocess.run(
        [PY, "-c", code, "estimate", str(recipe), "--gpus", str(ranks), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode not in (0, 1):
        raise SystemExit(f"tune estimate failed: {out.stderr[-2000:]}")
    data = json.loads(out.stdout)
    return data["peak_bytes"], data


def measure(
    folder: Path, name: str, recipe: Path, ranks: int, malloc: bool = True
) -> tuple[list[int], float]:
    env = _hwm_env(folder, name, malloc)
    shutil.rmtree(folder / f"run-{recipe.stem}", ignore_errors=True)  # this script's output
    if ranks > 1:
        env["BENCH_RANKED"] = "1"
        cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
        cmd += ["--master_port", str(29500 + os.getpid() % 1000), "-m", "tune", "run"]
    else:
        cmd = [PY, "-m", "tune", "run"]
    start = time.time()
    proc = subprocess.run(
        [*cmd, str(recipe), "--overwrite"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{name}: tune run failed")
    return _read_hwm(folder, name, ranks), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--default-malloc", action="store_true", help="also measure with glibc's default heap"
    )
    parser.add_argument(
        "--reestimate",
        default=None,
        metavar="JSON",
        help="recompute the estimates of a saved run (same --workdir), keep its measurements",
    )
    args = parser.parse_args()
    if args.reestimate:
        rows = json.loads(Path(args.reestimate).read_text())
        for row in rows:
            recipe = Path(args.workdir) / f"{row['case']}.toml"
            row["estimate"], detail = estimate(recipe, row["ranks"])
            row["error"] = (row["estimate"] - row["measured"]) / row["measured"]
            row["phase"], row["terms"] = detail["peak_phase"], detail["terms"]
        Path(args.reestimate).write_text(json.dumps(rows, indent=1))
        print(report(rows))
        return
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="tune-estimate-"))
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(folder)
    rows = []
    for name in args.cases.split(","):
        overrides, ranks, _ = CASES[name]
        recipe = write_recipe(folder, model, name, overrides)
        predicted, detail = estimate(recipe, ranks)
        peaks, seconds = measure(folder, name, recipe, ranks)
        base = baseline(folder, name)
        measured = max(peaks) - base
        row = {
            "case": name,
            "ranks": ranks,
            "baseline": base,
            "peaks": peaks,
            "measured": measured,
            "estimate": predicted,
            "error": (predicted - measured) / measured,
            "seconds": seconds,
            "phase": detail["peak_phase"],
            "terms": detail["terms"],
        }
        if args.default_malloc:
            tag = name + "-heap"
            peaks2, _ = measure(folder, tag, recipe, ranks, malloc=False)
            row["measured_default_malloc"] = max(peaks2) - baseline(folder, tag, malloc=False)
        rows.append(row)
        if args.json:  # after every case: a long run stopped halfway keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=1))
        print(
            f"{name}: est {predicted / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB "
            f"({100 * row['error']:+.1f}%), base {base / 2**20:.0f} MiB, {seconds:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(report(rows))


def report(rows: list[dict]) -> str:
    import torch
    import transformers

    cpu = re.sub(r"\s+", " ", _cpu_name())
    out = [
        f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        "",
        "| case | ranks | estimate MiB (phase) | measured MiB (peak RSS - baseline) "
        "| baseline MiB | error | default malloc MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        heap = r.get("measured_default_malloc")
        out.append(
            f"| {r['case']} | {r['ranks']} | {r['estimate'] / 2**20:.0f} ({r['phase']}) | "
            f"{r['measured'] / 2**20:.0f} | {r['baseline'] / 2**20:.0f} | "
            f"{100 * r['error']:+.1f}% | {heap / 2**20:.0f} |"
            if heap
            else f"| {r['case']} | {r['ranks']} | {r['estimate'] / 2**20:.0f} ({r['phase']}) | "
            f"{r['measured'] / 2**20:.0f} | {r['baseline'] / 2**20:.0f} | "
            f"{100 * r['error']:+.1f}% | - |"
        )
    return "\n".join(out)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
