"""DDP for real: 2 processes on gloo. Parity with one process, exact resume, prompt failure."""

from __future__ import annotations

import time

import pytest
from tune.testing import (
    final_weights,
    launch,
    max_weight_diff,
    recipe_dict,
    run_cli,
    sgd_step,
    step_difference,
    train_losses,
    write_plugin,
    write_recipe,
)

# Plugins for the launched processes (written to a folder; `-p NAME` loads them there).

EXPLODE_PLUGIN = """
from tune.plugin import Settings, hookimpl


class ExplodeSettings(Settings):
    rank: int = 1


@hookimpl
def tune_provide(provide):
    provide.adapter("explode", ExplodeSettings, doc="raises on one rank (failure propagation)")


@hookimpl
def tune_adapt_model(name, settings, model, ctx):
    if ctx.world.rank == settings.rank:
        raise RuntimeError(f"boom on rank {ctx.world.rank}")
    return model
"""


def lora_recipe(tmp_path, out, strategy, **train):
    data = recipe_dict(
        tmp_path,
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        optimizer={"lr": 5e-3},
        strategy=strategy,
        train={"output_dir": str(tmp_path / out), "max_steps": 4, **train},
    )
    return write_recipe(tmp_path, data, f"{out}.toml")


@pytest.fixture(scope="module")
def single_sgd(tmp_path_factory):
    """One process, global batch 4, one SGD step: the reference for every strategy."""
    return sgd_step(tmp_path_factory.mktemp("single"), "single", {"name": "single"}, 4, 1, 1)


def check_parity(single, tmp_path, strategy, micro, accum):
    loss_diff, weight_diff = step_difference(
        single, sgd_step(tmp_path, "dist", strategy, micro, accum, 2)
    )
    print(f"{strategy}: first-step loss diff {loss_diff:.2e}, max weight diff {weight_diff:.2e}")
    assert loss_diff <= 1e-5 and weight_diff <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("micro", "accum"), [(2, 1), (1, 2)])
def test_ddp_step_equals_single_process_over_the_same_global_batch(
    single_sgd, tmp_path, micro, accum
):
    check_parity(single_sgd, tmp_path, {"name": "ddp"}, micro, accum)


@pytest.mark.slow
def test_ddp_lora_trains_and_resumes_exactly(tmp_path):
    kwargs = {"max_steps": 6, "save_every": 3, "keep_last": 3}
    res = launch(lora_recipe(tmp_path, "straight", {"name": "ddp"}, **kwargs))
    assert res.returncode == 0, res.stderr[-3000:]
    straight = train_losses(tmp_path / "straight")
    assert straight[-1] < straight[0]
    resumed = lora_recipe(tmp_path, "resumed", {"name": "ddp"}, **kwargs)
    res = launch(resumed, 2, "--resume-from", str(tmp_path / "straight/checkpoints/step-3"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        max_weight_diff(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))
        <= 1e-6
    )
    assert train_losses(tmp_path / "resumed") == pytest.approx(straight[3:], abs=1e-6)


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_run_promptly(tmp_path):
    env = write_plugin(tmp_path, "explode_plugin", EXPLODE_PLUGIN)
    data = recipe_dict(
        tmp_path,
        adapt=[{"method": "explode", "rank": 1}],
        strategy={"name": "ddp", "timeout_s": 600},
        train={"output_dir": str(tmp_path / "boom")},
    )
    path = write_recipe(tmp_path, data)
    start = time.monotonic()
    res = launch(path, 2, "-p", "explode_plugin", env=env)
    elapsed = time.monotonic() - start
    assert res.returncode != 0
    output = res.stdout + res.stderr
    assert output.count("boom on rank 1") >= 1
    assert elapsed < 60, elapsed  # far below the 600 s collective timeout: no hang


@pytest.mark.slow
def test_single_strategy_refuses_a_multi_process_launch(tmp_path):
    path = write_recipe(tmp_path, recipe_dict(tmp_path))
    res = run_cli("run", "--nproc-per-node", "2", str(path))
    assert res.returncode != 0 and "ddp" in res.stderr


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    data = recipe_dict(tmp_path, strategy={"name": "ddp"}, train={"max_steps": 400})
    path = write_recipe(tmp_path, data)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune", "run", "--nproc-per-node", "2", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text()) > 300:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    assert "--nproc-per-node 2 --resume" in stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    stopped = max(steps)
    assert stopped < 400
    ckpt = out / f"checkpoints/step-{stopped}"
    assert (ckpt / "manifest.json").exists() and (ckpt / "rng-rank1.pt").exists()
