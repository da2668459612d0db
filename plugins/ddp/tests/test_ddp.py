"""DDP for real: 2 processes on gloo. Parity with one process, exact resume, prompt failure."""

from __future__ import annotations

import time

import pytest
from tune.testing import (
    final_weights,
    max_weight_diff,
    recipe_dict,
    run_cli,
    train_losses,
    write_plugin,
    write_recipe,
)

# Plugins for the launched processes (written to a folder; `-p NAME` loads them there).
SGD_PLUGIN = """
from tune.plugin import Settings, hookimpl


class SgdSettings(Settings):
    lr: float = 0.1


@hookimpl
def tune_provide(provide):
    provide.optimizer("sgd", SgdSettings, doc="plain SGD")


@hookimpl
def tune_build_optimizer(name, settings, params, ctx):
    import torch

    return torch.optim.SGD(params, lr=settings.lr)
"""

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


def launch(recipe, nproc=2, *extra, env=None):
    """`tune run [--nproc-per-node N] RECIPE EXTRA...` in a subprocess, with `env` added."""
    multi = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    return run_cli("run", *multi, str(recipe), *extra, env=env)


def lora_recipe(tmp_path, out, strategy, **train):
    data = recipe_dict(
        tmp_path,
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        optimizer={"lr": 5e-3},
        strategy=strategy,
        train={"output_dir": str(tmp_path / out), "max_steps": 4, **train},
    )
    return write_recipe(tmp_path, data, f"{out}.toml")


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
    return write_recipe(tmp_path, data, f"{out}.toml")


@pytest.fixture(scope="module")
def sgd_env(tmp_path_factory):
    """The env under which `-p sgd_plugin` loads the SGD optimizer in launched processes."""
    return write_plugin(tmp_path_factory.mktemp("plugins"), "sgd_plugin", SGD_PLUGIN)


@pytest.fixture(scope="module")
def single_sgd(tmp_path_factory, sgd_env):
    """One process, global batch 4, one SGD step: the reference for every strategy."""
    tmp = tmp_path_factory.mktemp("single")
    path = sgd_recipe(tmp, "single", {"name": "single"}, micro=4, accum=1)
    res = launch(path, 1, "-p", "sgd_plugin", env=sgd_env)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp / "single"


def check_parity(single, tmp_path, env, strategy, micro, accum):
    path = sgd_recipe(tmp_path, "dist", strategy, micro, accum)
    res = launch(path, 2, "-p", "sgd_plugin", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    loss_diff = abs(train_losses(single)[0] - train_losses(tmp_path / "dist")[0])
    weight_diff = max_weight_diff(final_weights(single), final_weights(tmp_path / "dist"))
    print(f"{strategy}: first-step loss diff {loss_diff:.2e}, max weight diff {weight_diff:.2e}")
    assert loss_diff <= 1e-5 and weight_diff <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("micro", "accum"), [(2, 1), (1, 2)])
def test_ddp_step_equals_single_process_over_the_same_global_batch(
    single_sgd, sgd_env, tmp_path, micro, accum
):
    check_parity(single_sgd, tmp_path, sgd_env, {"name": "ddp"}, micro, accum)


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
