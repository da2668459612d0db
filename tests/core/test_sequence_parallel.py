"""Ulysses sequence parallelism (`[strategy] sequence_parallel`): 2 processes on gloo equal one.

One torchrun launch runs every 2-process configuration in sequence (each a whole `tune run`
in the same two processes, a fresh rendezvous port each), since a launch costs more than a
tiny run: padded and packed, full and LoRA, under ddp and deepspeed, a DPO run, and a resume.
The single-process references run in this process.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tune.errors import TuneError
from tune.testing import (
    SGD_PLUGIN,
    chat_rows,
    final_weights,
    load_recipe,
    max_weight_diff,
    recipe_dict,
    run,
    train_losses,
    write_jsonl,
    write_plugin,
    write_recipe,
)
from tune.train.sequence_parallel import SequenceParallel, _segments, model_problem
from tune.train.ulysses import head_split

IGNORE = -100
LORA = [{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear", "dropout": 0.0}]

# Runs in every torchrun process: each job is one in-process `tune run`; a fresh port per job
# (a process group torn down cannot rendezvous again on the launcher's store).
# DeepSpeed caches its process groups in module globals: a later run in the same process
# starts them afresh (a real run has one process group per process).
RUNNER = """
import importlib, json, os, sys
from pathlib import Path
from tune.testing import run

os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
base = int(os.environ["SP_TEST_PORT"])
for i, job in enumerate(json.loads(Path(sys.argv[1]).read_text())):
    os.environ["MASTER_PORT"] = str(base + i)
    resume = Path(job["resume_from"]) if job.get("resume_from") else None
    run(Path(job["recipe"]), plugins=tuple(job.get("plugins", ())), resume_from=resume, overwrite=not resume)
    if "deepspeed.utils.groups" in sys.modules:
        importlib.reload(sys.modules["deepspeed.utils.groups"])
"""


# -- slicing, without processes ---------------------------------------------------------------
def _sp(rank: int) -> SequenceParallel:
    return SequenceParallel(2, rank, 2, group=None)


def test_slices_pad_to_a_multiple_and_count_every_target_once():
    ids = torch.arange(1, 16).reshape(3, 5)  # width 5: padded to 6 for 2 ranks
    labels = ids.clone()
    labels[0, :2] = IGNORE
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[2, 3:] = 0
    labels[2, 3:] = IGNORE
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "weight": torch.ones(3)}
    whole = int((labels[:, 1:] != IGNORE).sum())
    parts = [_sp(r).shard(batch) for r in (0, 1)]
    counted = 0
    for rank, (part, layout) in enumerate(parts):
        assert part["input_ids"].shape == (3, 3) and part["labels"].shape == (3, 4)
        assert part["position_ids"].tolist()[0] == [3 * rank, 3 * rank + 1, 3 * rank + 2]
        assert torch.equal(part["weight"], batch["weight"])  # per-row values pass through
        assert layout.width == 6 and layout.whole_rows
        counted += int((part["labels"][:, 1:] != IGNORE).sum())
    assert counted == whole  # the target of rank 0's last position sits on rank 0
    assert torch.equal(parts[0][0]["labels"][:, 3], labels[:, 3])
    assert (parts[1][0]["labels"][:, -2:] == IGNORE).all()  # pad column + carry column


def test_packed_rows_keep_their_global_positions_and_examples():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]])
    batch = {"input_ids": torch.arange(8)[None], "labels": torch.arange(8)[None]}
    batch["position_ids"] = positions
    part, layout = _sp(1).shard(batch)
    assert part["position_ids"].tolist() == [[1, 0, 1, 2]]
    assert layout.rows == [[(0, 3), (3, 5), (5, 8)]] and not layout.whole_rows
    assert _segments([5, 6, 0, 1, 2]) == [(0, 2), (2, 5)]


def test_heads_split_by_key_value_head_even_where_they_do_not_divide():
    assert head_split(4, 2, 2) == ([2, 2], [1, 1])
    assert head_split(9, 3, 2) == ([6, 3], [2, 1])  # SmolLM2-135M over 2 ranks
    assert head_split(32, 8, 8) == ([4] * 8, [1] * 8)  # Llama-3-8B over 8


def test_models_that_cannot_split_say_why():
    llama = {"num_attention_heads": 4, "num_key_value_heads": 2}
    assert model_problem(llama, 2) is None
    assert model_problem({"num_attention_heads": 9, "num_key_value_heads": 3}, 2) is None
    assert "2 key/value heads, fewer than the 3 ranks" in model_problem(llama, 3)
    window = {**llama, "sliding_window": 128}
    assert "sliding window" in model_problem(window, 2, max_seq_len=4096)
    assert model_problem(window, 2, max_seq_len=64) is None


@pytest.mark.parametrize(
    ("tables", "words"),
    [
        ({"strategy": {"name": "ddp", "sequence_parallel": 3}}, "fewer than the 3 ranks"),
        ({"strategy": {"name": "fsdp", "sequence_parallel": 4}}, "fewer than the 4 ranks"),
        (
            {
                "strategy": {"name": "deepspeed", "sequence_parallel": 2},
                "adapt": [{"method": "beacon"}],
            },
            "window by window",
        ),
    ],
    ids=["ddp", "fsdp", "beacon"],
)
def test_validate_refuses_what_cannot_split(tmp_path, tables, words):
    path = write_recipe(tmp_path, recipe_dict(tmp_path, **tables))
    with pytest.raises(TuneError) as err:
        load_recipe(path)
    assert words in str(err.value) and "sequence_parallel" in str(err.value)


# -- 2 processes against 1 --------------------------------------------------------------------
def _free_base(n: int) -> int:
    """A base port with n free ports after it."""
    for _ in range(50):
        base = random.randint(20000, 60000)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def _pairs(n: int) -> list[dict]:
    rows = []
    for row in chat_rows(n):
        user, assistant = row["messages"]
        echo = {"role": "assistant", "content": user["content"].split()[-1]}
        rows.append({"prompt": [user], "chosen": [assistant], "rejected": [echo]})
    return rows


# 6 heads, 3 key/value heads: over 2 ranks the heads split unevenly (4 + 2, kv 2 + 1)
UNEVEN = {"num_attention_heads": 6, "num_key_value_heads": 3, "hidden_size": 192}


def _recipe(tmp_path: Path, name: str, strategy: dict, pack: bool, lora: bool, **train) -> Path:
    tables = {"adapt": LORA} if lora else {}
    if name.endswith("padded-full"):
        tables["model"] = {"path": "tune:tiny-llama", "max_seq_len": 64, "config_overrides": UNEVEN}
    data = recipe_dict(
        tmp_path,
        n_rows=32,
        strategy=strategy,
        data={"shuffle": False, "pack": pack},
        optimizer={"name": "sgd", "lr": 0.5 if not lora else 2.0, "momentum": 0.9},
        train={
            "output_dir": str(tmp_path / name),
            "max_steps": 3,
            "micro_batch_size": 2,
            "grad_accum": 2,
            "max_grad_norm": 0.0,
            **train,
        },
        **tables,
    )
    return write_recipe(tmp_path, data, f"{name}.toml")


def _dpo_recipe(tmp_path: Path, name: str, strategy: dict) -> Path:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", _pairs(16))
    data = recipe_dict(
        tmp_path,
        n_rows=32,  # the chat rows the other cases read (recipe_dict writes them again)
        strategy=strategy,
        data={"format": "preference", "train": str(pairs), "template": "llama-3.1"},
        objective={"name": "dpo", "beta": 0.1},
        adapt=LORA,
        optimizer={"name": "sgd", "lr": 2.0},
        train={"output_dir": str(tmp_path / name), "max_steps": 2, "micro_batch_size": 2},
    )
    data["data"]["shuffle"] = False
    data["data"]["pack"] = True
    return write_recipe(tmp_path, data, f"{name}.toml")


CASES = {  # name: (strategy, packed, LoRA); *-padded-full on a model of UNEVEN heads
    "ddp-padded-full": ("ddp", False, False),
    "ddp-packed-lora": ("ddp", True, True),
    "deepspeed-packed-full": ("deepspeed", True, False),
    "deepspeed-padded-lora": ("deepspeed", False, True),
    "fsdp-packed-lora": ("fsdp", True, True),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every 2-process configuration in one launch, and each one's single-process twin."""
    tmp = tmp_path_factory.mktemp("sp")
    env = write_plugin(tmp, "sgd_plugin", SGD_PLUGIN)
    sys.path.insert(0, str(tmp))
    jobs = []
    resume = {"save_every": 2, "keep_last": 2, "max_steps": 4}
    for name, (strategy, pack, lora) in CASES.items():
        extra = resume if name == "ddp-packed-lora" else {}
        sp = {"name": strategy, "sequence_parallel": 2}
        jobs.append(
            {"recipe": str(_recipe(tmp, name, sp, pack, lora, **extra)), "plugins": ["sgd_plugin"]}
        )
        run(
            _recipe(tmp, f"single-{name}", {"name": "single"}, pack, lora, **extra),
            plugins=("sgd_plugin",),
        )
    resumed = _recipe(tmp, "resumed", {"name": "ddp", "sequence_parallel": 2}, True, True, **resume)
    jobs.append(
        {
            "recipe": str(resumed),
            "plugins": ["sgd_plugin"],
            "resume_from": str(tmp / "ddp-packed-lora/checkpoints/step-2"),
        }
    )
    jobs.append(
        {
            "recipe": str(_dpo_recipe(tmp, "dpo", {"name": "ddp", "sequence_parallel": 2})),
            "plugins": ["sgd_plugin"],
        }
    )
    run(_dpo_recipe(tmp, "single-dpo", {"name": "single"}), plugins=("sgd_plugin",))
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    (tmp / "runner.py").write_text(RUNNER)
    env = {**os.environ, **env, "SP_TEST_PORT": str(_free_base(len(jobs)))}
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], *(p for p in sys.path if p)])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    res = subprocess.run(
        [*cmd, str(tmp / "runner.py"), str(tmp / "jobs.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    sys.path.remove(str(tmp))
    (tmp / "launch.log").write_text(res.stdout + res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("[rank0]")]
    assert res.returncode == 0, "\n".join(errors[-30:]) or res.stderr[-4000:]
    return tmp, res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", [*CASES, "dpo"])
def test_two_processes_split_sequences_like_one(runs, name):
    tmp, _ = runs
    one, two = tmp / f"single-{name}", tmp / name
    a, b = train_losses(one), train_losses(two)
    assert len(a) == len(b) >= 2
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5, (a, b)
    assert max_weight_diff(final_weights(one), final_weights(two)) <= 1e-5


@pytest.mark.slow
def test_resume_under_sequence_parallelism_is_exact(runs):
    tmp, _ = runs
    straight, resumed = tmp / "ddp-packed-lora", tmp / "resumed"
    assert train_losses(resumed) == pytest.approx(train_losses(straight)[2:], abs=1e-6)
    assert max_weight_diff(final_weights(straight), final_weights(resumed)) <= 1e-6
