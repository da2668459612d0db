"""bench/gpu_proof.py stays runnable between the rare lent GPUs: its CPU dry run (the same code
paths, tiny shapes, 2 steps) writes every item's JSON and Markdown, with numbers where the item
can run on a CPU and a reason where it cannot."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ITEMS = [
    "0-environment",
    "1-throughput",
    "2-longest-sequence",
    "3-qlora",
    "4-beacon",
    "5-gpu-tests",
]


def ok_results(report: dict) -> list[dict]:
    return [r for r in report["results"] if r.get("status") == "ok"]


@pytest.mark.slow
def test_the_dry_run_writes_every_items_json_with_numbers_or_a_reason(tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_proof.py"),
            "--dry-run",
            "--data",
            "synthetic",  # what a fresh clone has; the alpaca file is carried to the GPU only
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert elapsed < 240, f"the dry run took {elapsed:.0f} s (budget 170 s)"

    reports = {}
    for key in ITEMS:
        assert (out / f"{key}.md").is_file(), key
        reports[key] = json.loads((out / f"{key}.json").read_text(encoding="utf-8"))
    for key, report in reports.items():
        assert report["status"] in {"ok", "partial", "skipped", "not run"}, (key, report)
        if report["status"] in {"skipped", "not run"}:
            assert report["reason"], key

    env = reports["0-environment"]
    assert env["environment"]["cuda"] is False
    assert env["setup"]["examples"] > 0 and env["setup"]["parameters"] > 0

    # 1: the CPU runs measured, tune padded trains Trainer's step-1 rows to the same loss,
    # and the CUDA-only runs say why they did not run
    throughput = {r["case"]: r for r in reports["1-throughput"]["results"]}
    assert ok_results(reports["1-throughput"]), throughput
    for row in ok_results(reports["1-throughput"]):
        assert row["tokens_per_s"] > 0 and row["peak_memory_gib"] > 0, row
    padded = throughput["tune padded"]
    if padded["status"] == "ok" and throughput["Trainer + PEFT padded"]["status"] == "ok":
        assert padded["step1_loss_rel_diff"] < 1e-4, padded
    assert throughput["tune packed + Liger"]["status"] == "skipped"
    assert "no CUDA" in throughput["tune packed + Liger"]["reason"]

    # 2: both searches probed real lengths
    if reports["2-longest-sequence"]["status"] in {"ok", "partial"}:
        for row in ok_results(reports["2-longest-sequence"]):
            assert row["longest_tokens"] >= 256 and row["probes"], row

    # 3: QLoRA on bitsandbytes' CPU kernels where it imports, else skipped with the reason
    for row in ok_results(reports["3-qlora"]):
        assert row["tokens_per_s"] > 0, row

    # 4: every configuration that ran has its step time
    for row in ok_results(reports["4-beacon"]):
        assert row["step_s"] > 0, row

    # 5: pytest ran; without CUDA the gpu-marked tests skip
    gpu_tests = reports["5-gpu-tests"]
    if gpu_tests["status"] == "skipped" and gpu_tests["results"]:
        assert "no CUDA" in gpu_tests["reason"]
        assert gpu_tests["results"][0]["failures"] == gpu_tests["results"][0]["errors"] == 0
