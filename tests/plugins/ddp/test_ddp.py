"""DDP for real: 2 processes on gloo. Parity with one process, exact resume, prompt failure."""

from __future__ import annotations

import time

import pytest
from tune.testing import recipe_dict, run_cli, write_recipe

from tests.plugins.distributed import dist_recipe, launch, losses, max_diff, weights


@pytest.fixture(scope="module")
def single_sgd(tmp_path_factory):
    """One process, global batch 4, one SGD step: the reference for every strategy."""
    tmp = tmp_path_factory.mktemp("single")
    path = sgd_recipe(tmp, "single", {"name": "single"}, micro=4, accum=1)
    res = launch(path, 1, "-p", "tests.core.hook_plugin")
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp / "single"


def sgd_recipe(tmp_path, out, strategy, micro, accum):
    """Full fine-tuning with plain SGD: an update proportional to the gradient, so any error in
    the loss normalization across ranks or micro-batches shows in the weights."""
    data = recipe_dict(
        tmp_path,
        optimizer={"name": "sgd", "lr": 0.5},
        strategy=strategy,
        data={"shuffle": False},
        train={
            "output_dir": str(tmp_path / out),
            "max_steps": 1,
            "micro_batch_size": micro,
            "grad_accum": accum,
            "max_grad_norm": 0.0,
        },
    )
    del data["optimizer"]["lr"]
    data["optimizer"]["lr"] = 0.5
    return write_recipe(tmp_path, data, f"{out}.toml")


def check_parity(single, tmp_path, strategy, micro, accum):
    path = sgd_recipe(tmp_path, "dist", strategy, micro, accum)
    res = launch(path, 2, "-p", "tests.core.hook_plugin")
    assert res.returncode == 0, res.stderr[-3000:]
    loss_diff = abs(losses(single)[0] - losses(tmp_path / "dist")[0])
    weight_diff = max_diff(weights(single), weights(tmp_path / "dist"))
    print(f"{strategy}: first-step loss diff {loss_diff:.2e}, max weight diff {weight_diff:.2e}")
    assert loss_diff <= 1e-5 and weight_diff <= 1e-5


@pytest.mark.parametrize(("micro", "accum"), [(2, 1), (1, 2)])
def test_ddp_step_equals_single_process_over_the_same_global_batch(
    single_sgd, tmp_path, micro, accum
):
    check_parity(single_sgd, tmp_path, {"name": "ddp"}, micro, accum)


def test_ddp_lora_trains_and_resumes_exactly(tmp_path):
    straight = dist_recipe(
        tmp_path, "straight", {"name": "ddp"}, max_steps=6, save_every=3, keep_last=3
    )
    res = launch(straight)
    assert res.returncode == 0, res.stderr[-3000:]
    assert losses(tmp_path / "straight")[-1] < losses(tmp_path / "straight")[0]
    resumed = dist_recipe(
        tmp_path, "resumed", {"name": "ddp"}, max_steps=6, save_every=3, keep_last=3
    )
    res = launch(resumed, 2, "--resume-from", str(tmp_path / "straight/checkpoints/step-3"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert max_diff(weights(tmp_path / "straight"), weights(tmp_path / "resumed")) <= 1e-6
    assert losses(tmp_path / "resumed") == pytest.approx(
        losses(tmp_path / "straight")[3:], abs=1e-6
    )


def test_a_rank_that_raises_ends_the_run_promptly(tmp_path):
    data = recipe_dict(
        tmp_path,
        adapt=[{"method": "explode", "rank": 1}],
        strategy={"name": "ddp", "timeout_s": 600},
        train={"output_dir": str(tmp_path / "boom")},
    )
    path = write_recipe(tmp_path, data)
    start = time.monotonic()
    res = run_cli("run", "--nproc-per-node", "2", str(path), "-p", "tests.core.hook_plugin")
    elapsed = time.monotonic() - start
    assert res.returncode != 0
    output = res.stdout + res.stderr
    assert output.count("boom on rank 1") >= 1
    assert elapsed < 60, elapsed  # far below the 600 s collective timeout: no hang


def test_single_strategy_refuses_a_multi_process_launch(tmp_path):
    path = write_recipe(tmp_path, recipe_dict(tmp_path))
    res = run_cli("run", "--nproc-per-node", "2", str(path))
    assert res.returncode != 0 and "ddp" in res.stderr
