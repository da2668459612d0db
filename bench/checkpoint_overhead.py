"""What checkpoint manifests (sizes + sha256 of every file, written last) cost on the quickstart.

Runs recipes/quickstart.toml in this process with `tune.train.checkpoints.manifest.write` and
`tune.train.checkpoints.save.save` timed, and reports both against the run's wall time.

    .venv/bin/python bench/checkpoint_overhead.py   # writes bench/results/checkpoint_overhead.md
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import torch
from tune.testing import run
from tune.train.checkpoints import manifest
from tune.train.checkpoints import save as checkpoint

ROOT = Path(__file__).resolve().parents[1]
spent = {"manifest": 0.0, "save": 0.0, "saves": 0}


def timed(fn, key):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start
            if key == "save":
                spent["saves"] += 1

    return wrapper


def main() -> None:
    manifest.write = timed(manifest.write, "manifest")
    checkpoint.save = timed(checkpoint.save, "save")
    with tempfile.TemporaryDirectory() as tmp:
        text = (ROOT / "recipes/quickstart.toml").read_text()
        recipe = Path(tmp) / "quickstart.toml"
        recipe.write_text(
            text.replace('output_dir = "runs/quickstart"', f'output_dir = "{tmp}/run"')
        )
        for name in ("data",):
            (Path(tmp) / name).symlink_to(ROOT / "recipes" / name)
        start = time.perf_counter()
        summary, _ = run(recipe)
        wall = time.perf_counter() - start
        ckpt = sorted((Path(tmp) / "run/checkpoints").iterdir())[-1]
        size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    rows = [
        ("run wall time (s)", f"{wall:.1f}"),
        ("checkpoints written", str(spent["saves"])),
        ("checkpoint size", f"{size / 2**20:.1f} MiB"),
        (
            "all checkpoint saves (s)",
            f"{spent['save']:.2f} ({100 * spent['save'] / wall:.2f}% of run)",
        ),
        (
            "of which manifests (s)",
            f"{spent['manifest']:.3f} ({100 * spent['manifest'] / wall:.2f}% of run, "
            f"{100 * spent['manifest'] / max(spent['save'] - spent['manifest'], 1e-9):.1f}% "
            "of the saves without them)",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    text = (
        "# Checkpoint manifest overhead on the quickstart\n\n"
        f"`{Path(__file__).relative_to(ROOT)}`; {platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; steps {summary['steps']}.\n\n"
        "| what | measured |\n|---|---|\n" + table + "\n"
    )
    out = ROOT / "bench/results/checkpoint_overhead.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
