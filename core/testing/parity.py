"""Strategy parity: the same step in N processes and in one, compared; the probe metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tune.plugin import hookimpl
from tune.testing.models import final_weights, max_weight_diff, train_losses
from tune.testing.runs import recipe_dict, run_cli, write_plugin, write_recipe


def launch(recipe: Path, nproc: int = 2, *extra: str, env: dict[str, str] | None = None):
    """`tune run --nproc-per-node N RECIPE EXTRA` (torchrun, gloo on CPU), as a user would."""
    multi = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    return run_cli("run", *multi, str(recipe), *extra, env=env)


# Plain SGD, for strategy tests: its update is proportional to the gradient, so any error in
# the loss normalization across ranks or micro-batches shows in the weights. With `momentum` the
# optimizer has state, so a resume must restore it.
SGD_PLUGIN = """
from tune.plugin import Settings, hookimpl


class SgdSettings(Settings):
    lr: float = 0.1
    momentum: float = 0.0


@hookimpl
def tune_provide(provide):
    provide.optimizer("sgd", SgdSettings, doc="plain SGD")


@hookimpl
def tune_build_optimizer(name, settings, params, ctx):
    import torch

    return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
"""


def sgd_step(tmp_path: Path, out: str, strategy: dict, micro: int, accum: int, nproc: int):
    """One full-fine-tune SGD step (`-p sgd_plugin`, launched with `nproc` processes) into
    tmp_path/out; compare two with `step_difference`. Returns the run directory."""
    env = write_plugin(tmp_path, "sgd_plugin", SGD_PLUGIN)
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
    res = launch(write_recipe(tmp_path, data, f"{out}.toml"), nproc, "-p", "sgd_plugin", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / out


def step_difference(a: Path, b: Path) -> tuple[float, float]:
    """(first-step loss difference, largest final-weight difference) of two runs."""
    loss = abs(train_losses(a)[0] - train_losses(b)[0])
    return loss, max_weight_diff(final_weights(a), final_weights(b))


# The final model's logits on these ids are what reload tests compare (merge, plain PEFT, a
# beacon attached to a fresh base).
PROBE_IDS = [[1, 40, 50, 60, 70, 80, 90, 100, 5, 6, 7]]


class Probe:
    """Metric `probe`: records the evaluated model's logits on PROBE_IDS in `logits` (register
    it with the `probe` fixture, add "probe" to [eval] metrics, compare with a reloaded model)."""

    def __init__(self) -> None:
        self.logits: list[Any] = []

    @hookimpl
    def tune_provide(self, provide):
        provide.metric("probe", doc="records the model's logits on PROBE_IDS")

    @hookimpl
    def tune_evaluate(self, names, model, data, ctx):
        if "probe" not in names:
            return None
        import torch

        with torch.no_grad():
            ids = torch.tensor(PROBE_IDS, device=data.device)
            self.logits.append(model(input_ids=ids).logits.float().cpu())
        return {"probe": float(self.logits[-1].abs().mean())}
