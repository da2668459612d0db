"""Runs that never lose or misreport work: faults injected on purpose into tiny runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tune.errors import TuneError
from tune.testing import (
    final_weights,
    max_weight_diff,
    recipe_dict,
    run,
    run_cli,
    write_plugin,
    write_recipe,
)


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _train_steps(out: Path) -> list[int]:
    return [r["step"] for r in _records(out) if r["kind"] == "train"]


def _finished_run(tmp_path: Path, steps: int = 6, **train) -> tuple[Path, Path]:
    data = recipe_dict(
        tmp_path,
        scheduler={"name": "cosine", "warmup_steps": 1},
        train={"max_steps": steps, "save_every": 2, "keep_last": 5, **train},
    )
    path = write_recipe(tmp_path, data)
    run(path)
    return path, Path(data["train"]["output_dir"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One 6-step run with checkpoints at 2, 4, 6 and its final weights, copied per test."""
    root = tmp_path_factory.mktemp("finished")
    path, out = _finished_run(root)
    return root, path, out, final_weights(out)


def _copy(finished, tmp_path: Path) -> tuple[Path, Path, dict]:
    root, _, out, weights = finished
    shutil.copytree(root, tmp_path / "w")
    path = tmp_path / "w" / "recipe.toml"
    text = path.read_text().replace(str(root), str(tmp_path / "w"))
    path.write_text(text)
    return path, tmp_path / "w" / out.name, weights


# -- 1. resume with a changed recipe ----------------------------------------------------------------
def test_resume_with_changed_lr_is_refused_with_a_diff_and_nothing_changes(finished, tmp_path):
    path, out, _ = _copy(finished, tmp_path)
    shutil.rmtree(out / "final")
    before = (out / "recipe.toml").read_text()
    result = run_cli("run", str(path), "--resume", "-o", "optimizer.lr=1e-2")
    assert result.returncode == 2, result.stderr
    assert "optimizer.lr: 0.001 -> 0.01" in result.stderr
    assert "--resume-changed" in result.stderr and "Traceback" not in result.stderr
    assert (out / "recipe.toml").read_text() == before


@pytest.mark.parametrize(
    "override, key",
    [("train.micro_batch_size=2", "train.micro_batch_size"), ("train.seed=7", "train.seed")],
)
def test_resume_with_changed_batch_geometry_or_seed_is_refused(finished, tmp_path, override, key):
    path, out, _ = _copy(finished, tmp_path)
    result = run_cli("run", str(path), "--resume", "-o", override)
    assert result.returncode == 2 and key in result.stderr, result.stderr


def test_resume_with_different_data_content_is_refused(finished, tmp_path):
    path, out, _ = _copy(finished, tmp_path)
    shutil.rmtree(out / "final")
    train = tmp_path / "w" / "train.jsonl"
    train.write_text("\n".join(train.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(TuneError, match=r"data\.content"):
        run(path, resume=True)


def test_free_settings_may_change_on_resume(finished, tmp_path):
    path, out, weights = _copy(finished, tmp_path)
    shutil.rmtree(out / "final")
    for step in (4, 6):
        shutil.rmtree(out / f"checkpoints/step-{step}")
    text = path.read_text().replace("log_every = 1", "log_every = 2")
    path.write_text(text)
    run(path, resume=True)
    assert max_weight_diff(final_weights(out), weights) == 0.0


def test_resume_changed_really_uses_the_new_lr_and_says_so(finished, tmp_path):
    path, out, _ = _copy(finished, tmp_path)
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints/step-6")
    shutil.rmtree(out / "checkpoints/step-4")
    text = path.read_text().replace('name = "cosine"', 'name = "constant"')
    path.write_text(text.replace("lr = 0.001", "lr = 0.02"))
    run(path, resume=True, resume_changed=True)
    lrs = {r["step"]: r["lr"] for r in _records(out) if r["kind"] == "train"}
    assert lrs[3] == pytest.approx(0.02) and lrs[6] == pytest.approx(0.02)
    saved = (out / "recipe.toml").read_text()
    assert "lr = 0.02" in saved and "--resume-changed" in saved and "optimizer.lr" in saved
    assert "lr = 0.02" in (out / "final/recipe.toml").read_text()


# -- 2. output-dir ownership --------------------------------------------------------------------
def test_overwrite_never_deletes_files_tune_did_not_write(finished, tmp_path):
    path, out, _ = _copy(finished, tmp_path)
    (out / "final/thesis.txt").write_text("two years of work")
    result = run_cli("run", str(path), "--overwrite")
    assert result.returncode == 2 and "final/thesis.txt" in result.stderr, result.stderr
    assert (out / "final/thesis.txt").read_text() == "two years of work"
    assert (out / "checkpoints/step-6/manifest.json").exists()  # nothing was deleted
    (out / "final/thesis.txt").unlink()
    (out / "notes.txt").write_text("mine")  # not a name tune writes: left alone
    run(path, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]


def test_a_folder_holding_the_users_own_files_is_refused_naming_them(tmp_path):
    data = recipe_dict(tmp_path)
    out = Path(data["train"]["output_dir"])
    out.mkdir()
    (out / "recipe.toml").write_text("# my own recipe\n")
    (out / "loss.png").write_bytes(b"mine")
    with pytest.raises(TuneError, match="recipe.toml") as err:
        run(write_recipe(tmp_path, data))
    assert "loss.png" in str(err.value)
    assert (out / "recipe.toml").read_text() == "# my own recipe\n"


def test_a_second_run_on_a_locked_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    from tune.train.rundir import LOCK, RunDir

    data = recipe_dict(tmp_path, train={"max_steps": 1})
    out = Path(data["train"]["output_dir"])
    holder = RunDir(out, "test")
    out.mkdir()
    holder.lock()
    try:
        with pytest.raises(TuneError, match=f"in use by another tune run \\(pid {os.getpid()}"):
            run(write_recipe(tmp_path, data))
    finally:
        holder.release()
    # A lock file left by a killed run (no process holds it) does not block the next run.
    (out / LOCK).write_text(json.dumps({"pid": 999999, "host": "elsewhere"}))
    run(write_recipe(tmp_path, data))
    assert (out / "final").is_dir()
    after = RunDir(out, "test")  # the run let go of the lock (its file stays: see rundir)
    after.lock()
    after.release()


# -- 3. corrupt checkpoints ----------------------------------------------------------------------
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage",
    [
        ("trainable.safetensors", _truncate),
        ("optimizer.pt", _truncate),
        ("scheduler.pt", lambda p: p.write_bytes(b"")),
        ("state.json", lambda p: p.write_text('{"step": 6, "epo')),
    ],
    ids=lambda d: d[0] if isinstance(d, tuple) else d,
)
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_resumes_exactly(
    finished, tmp_path, damage, capsys
):
    name, hurt = damage
    path, out, weights = _copy(finished, tmp_path)
    shutil.rmtree(out / "final")  # as if killed after step 6's checkpoint
    hurt(out / "checkpoints/step-6" / name)
    run(path, resume=True)
    said = capsys.readouterr().out
    assert "damaged" in said and name in said and "resuming from step-4" in said
    assert max_weight_diff(final_weights(out), weights) == 0.0  # bit-exact all the same
    assert _train_steps(out) == [1, 2, 3, 4, 5, 6]  # no duplicated records


def test_a_damaged_checkpoint_named_by_resume_from_exits_2_naming_an_intact_one(finished, tmp_path):
    path, out, _ = _copy(finished, tmp_path)
    _truncate(out / "checkpoints/step-6/optimizer.pt")
    result = run_cli("run", str(path), "--resume-from", str(out / "checkpoints/step-6"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "optimizer.pt" in result.stderr and "step-4" in result.stderr


# -- 4. killed during the very first checkpoint ---------------------------------------------------
def test_killed_before_the_first_checkpoint_each_command_points_to_one_that_works(
    finished, tmp_path
):
    path, out, weights = _copy(finished, tmp_path)
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints")
    (out / "checkpoints/.tmp-step-2").mkdir(parents=True)  # the half-written first one
    result = run_cli("run", str(path))
    assert result.returncode == 2 and "--resume starts it again from step 0" in result.stderr
    run(path, resume=True)
    assert max_weight_diff(final_weights(out), weights) == 0.0
    assert _train_steps(out) == [1, 2, 3, 4, 5, 6]


# -- 5. signals --------------------------------------------------------------------------------
def _start(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "tune", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_step(out: Path, step: int, proc: subprocess.Popen, limit: float = 240) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and any(s >= step for s in _train_steps(out)):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {step}: {proc.communicate()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_finishes_the_step_checkpoints_and_resumes_bit_exact(tmp_path, sig):
    straight = recipe_dict(tmp_path, train={"max_steps": 40, "output_dir": str(tmp_path / "a")})
    run(write_recipe(tmp_path, straight, "a.toml"))
    data = recipe_dict(tmp_path, train={"max_steps": 40, "output_dir": str(tmp_path / "b")})
    path = write_recipe(tmp_path, data, "b.toml")
    proc = _start(path)
    _wait_for_step(tmp_path / "b", 3, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    said = stdout + stderr
    assert signal.Signals(sig).name in said and f"python -m tune run {path} --resume" in stderr
    stopped = max(_train_steps(tmp_path / "b"))
    assert stopped < 40 and (tmp_path / f"b/checkpoints/step-{stopped}/manifest.json").exists()
    run(path, resume=True)
    assert max_weight_diff(final_weights(tmp_path / "a"), final_weights(tmp_path / "b")) == 0.0


def test_the_second_ctrl_c_aborts_at_once():
    from tune.train.signals import REPEAT_WINDOW_S, StopRequest

    said = []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    with StopRequest(say=said.append) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT" and "Ctrl-C again" in said[0]
        os.kill(os.getpid(), signal.SIGINT)  # the same press, forwarded by torchrun: ignored
        time.sleep(REPEAT_WINDOW_S + 0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler it found is back


# -- 6. honest summaries after resume -----------------------------------------------------------
def test_resumed_summary_counts_this_process_and_keeps_the_first_loss(finished, tmp_path):
    path, out, _ = _copy(finished, tmp_path)
    first = json.loads((out / "summary.json").read_text())
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints/step-6")
    summary, _ = run(path, resume=True)
    assert summary["resumed_from_step"] == 4
    assert summary["first_loss"] == first["first_loss"]
    assert summary["tokens"] == first["tokens"]
    assert 0 < summary["tokens_this_run"] < summary["tokens"] / 2
    assert summary["token_efficiency"] <= 1.0
    n, wall = summary["tokens_this_run"], summary["wall_s"]  # wall_s is rounded to 10 ms
    assert n / (wall + 0.006) <= summary["tokens_per_s"] <= n / max(wall - 0.006, 1e-3)
    assert _train_steps(out) == [1, 2, 3, 4, 5, 6]


# -- 8. a failed save ---------------------------------------------------------------------------
# A plugin module runs when `-p` loads it, before the run writes anything.
FSIZE_PLUGIN = """
import os, resource, signal

limit = int(os.environ["TUNE_TEST_FSIZE"])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
"""


def test_a_full_disk_while_saving_is_one_paragraph_and_the_last_checkpoint_survives(tmp_path):
    data = recipe_dict(tmp_path, train={"max_steps": 4, "save_every": 2})
    path = write_recipe(tmp_path, data)
    run(path)
    out = Path(data["train"]["output_dir"])
    weights = (out / "checkpoints/step-2/trainable.safetensors").stat().st_size
    optimizer = (out / "checkpoints/step-2/optimizer.pt").stat().st_size
    assert optimizer > weights
    env = write_plugin(tmp_path, "fsize_limit", FSIZE_PLUGIN)
    env["TUNE_TEST_FSIZE"] = str((weights + optimizer) // 2)  # weights fit, optimizer state not
    result = run_cli("run", str(path), "-p", "fsize_limit", "--overwrite", env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "could not write the checkpoint step-2" in (
        result.stderr
    )
    assert "--resume" in result.stderr
    assert not list((out / "checkpoints").glob(".tmp-*"))  # no half-written checkpoint left
