"""The wandb tracker in offline mode, read back from the run's .wandb file with wandb's protos."""

from __future__ import annotations

import json
import struct
import time
import zlib

import pytest
from tune.testing import recipe_dict

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")


BLOCK, HEADER = 32768, 7  # the .wandb file: a LevelDB-style log of wandb Record protos


def records(path):
    """Every Record in a .wandb transaction log (7-byte file header, 32 KiB blocks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer: skip to the next block
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # still being written
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if length == 0 and kind == 0:
            break
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc or crc != 0
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def read_run(folder):
    """(run record, [{key: value} per history row], config) from an offline run folder.

    wandb's service writes the file asynchronously after `finish()` returns: wait for the exit
    record (the last one), without which the history may be incomplete.
    """
    (log,) = folder.glob("*.wandb")
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in records(log)):
        assert time.monotonic() < deadline, f"{log}: no exit record"
        time.sleep(0.2)
    run, rows, config = None, [], {"_artifacts": []}
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            for item in record.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "artifact":
            config["_artifacts"].append(record.artifact)
        elif kind == "history":
            rows.append(
                {
                    i.key or ".".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    return run, rows, config


def _recipe(tmp_path, **train):
    return recipe_dict(
        tmp_path,
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity"]},
        train={"max_steps": 4, "save_every": 2, "eval_every": 2, **train},
        generate={"prompts": ["reverse hello"], "max_new_tokens": 4},
        track=[
            {
                "name": "wandb",
                "mode": "offline",
                "project": "tests",
                "tags": ["ci"],
                "log_artifact": True,
            }
        ],
    )


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.mark.slow
def test_offline_history_config_and_resume_same_run(tmp_path, run_recipe):
    run_dir = tmp_path / "run"
    run_recipe(_recipe(tmp_path))
    (first,) = (run_dir / "wandb").glob("offline-run-*")
    run, rows, config = read_run(first)
    assert run.project == "tests" and run.display_name == "run" and list(run.tags) == ["ci"]
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    expected = [(r["step"], r["loss"]) for r in jsonl if r["kind"] == "train"]
    losses = [(r["_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected])
    assert [r["_step"] for r in rows if "eval/eval_loss" in r] == [2, 4]
    (table,) = [r for r in rows if "samples._type" in r]
    assert table["samples._type"] == "table-file" and table["_step"] == 4
    saved = json.loads((first / "files" / table["samples.path"]).read_text())
    assert saved["columns"] == ["step", "prompt", "reply"] and saved["data"][0][:2] == [
        4,
        "reverse hello",
    ]
    assert config["optimizer"]["lr"] == 0.001
    models = [a for a in config["_artifacts"] if a.type == "model"]
    assert [a.name for a in models] == ["run-final"]
    assert "model.safetensors" in {f.path for f in models[0].manifest.contents}

    # Resume from step 2, not the last checkpoint: steps 3 and 4 are trained again, and the
    # W&B run, which holds them already, does not get them twice.
    run_recipe(
        _recipe(tmp_path, max_steps=6),
        resume_from=run_dir / "checkpoints" / "step-2",
        resume_changed=True,
    )
    second = next(p for p in (run_dir / "wandb").glob("offline-run-*") if p != first)
    again, rows2, _ = read_run(second)
    assert again.run_id == run.run_id
    assert [r["_step"] for r in rows2 if "train/loss" in r] == [5, 6]
    assert [r["_step"] for r in rows2 if "eval/eval_loss" in r] == [6]
    steps = [r["_step"] for r in rows + rows2 if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # what `wandb sync` of both sessions uploads


@pytest.mark.slow
def test_the_wandb_folder_in_the_run_directory_is_the_runs(tmp_path, run_recipe):
    """wandb/ is claimed: --overwrite removes the earlier run's files, and a user's folder of
    that name is never written to."""
    recipe = _recipe(tmp_path, max_steps=2, save_every=0, eval_every=0)
    run_recipe(recipe)
    run_recipe(recipe, overwrite=True)
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*"))) == 1

    other = tmp_path / "other"
    (other / "wandb").mkdir(parents=True)
    (other / "wandb" / "notes.txt").write_text("mine")
    recipe["train"]["output_dir"] = str(other)
    summary, _ = run_recipe(recipe, name="other.toml")
    assert summary["steps"] == 2  # the tracker is dropped with a warning; training goes on
    assert [p.name for p in (other / "wandb").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_missing_library_listed_and_only_breaks_runs_using_it(tmp_path):
    """Simulated uninstall of wandb: listed with why, refuses only recipes that use it."""
    from tune.testing import check_missing_library

    check_missing_library(tmp_path, "wandb", "wandb", _recipe(tmp_path))
