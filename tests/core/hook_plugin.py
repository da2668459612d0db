"""A plugin used by the tests (loaded with `-p tests.core.hook_plugin`): one backend per hook.

It records what the core handed it so tests can assert each hook was called, with what, and
in which order.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from tune.plugin import Load, Quantization, hookimpl

CALLS: list[tuple[str, object]] = []
GRADS: list[dict[str, object]] = []
PROBES: list[object] = []  # logits of the final model on PROBE_IDS, from the "probe" metric
PROBE_IDS = [
    [1, 40, 50, 60, 70, 80, 90, 100, 5, 6, 7]
]  # gradients seen by the "recording" strategy, per step


class _S(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FreezeSettings(_S):
    keep: str = "lm_head"
    tag: str = ""


class ExplodeSettings(_S):
    rank: int = 1


class SgdSettings(_S):
    lr: float = 0.1


class FakeQuantSettings(_S):
    bits: int = 4


@hookimpl
def tune_provide(provide):
    provide.adapter("freeze_except", FreezeSettings, doc="freeze all but the named module")
    provide.adapter("explode", ExplodeSettings, doc="raises on one rank (failure propagation)")
    provide.optimizer("sgd", SgdSettings, doc="plain SGD")
    provide.strategy("recording", doc="single device; records gradients before each step")
    provide.quantization(
        "fakequant", FakeQuantSettings, doc="records that it was asked", build=FakeQuant
    )
    provide.metric("weight_norm", doc="L2 norm of trainable weights")
    provide.metric("also_loss", doc="returns eval_loss again (a duplicate key)")
    provide.metric("probe", doc="records the model's logits on PROBE_IDS")
    provide.loader("recording_loader", doc="the transformers tiny model, recorded")


@hookimpl
def tune_adapt_model(name, settings, model, ctx):
    if name == "explode":
        if ctx.world.rank == settings.rank:
            raise RuntimeError(f"boom on rank {ctx.world.rank}")
        return model
    CALLS.append(("adapt", settings.tag))
    for pname, param in model.named_parameters():
        param.requires_grad = pname.startswith(settings.keep) or "embed_tokens" in pname
    return model


@hookimpl
def tune_build_optimizer(name, settings, params, ctx):
    import torch

    CALLS.append(("optimizer", len(params)))
    return torch.optim.SGD(params, lr=settings.lr)


@hookimpl
def tune_choose_strategy(name, settings, ctx):
    from tune.plugin import Strategy

    class Recording(Strategy):
        def step(self, model, optimizer, max_grad_norm):
            grads = {
                n: p.grad.detach().clone()
                for n, p in model.named_parameters()
                if p.grad is not None
            }
            GRADS.append(grads)
            return super().step(model, optimizer, max_grad_norm)

    CALLS.append(("strategy", name))
    return Recording()


class FakeQuant(Quantization):
    def config(self):
        CALLS.append(("quantization", self.settings.bits))
        return {"fake": self.settings.bits}

    def prepare(self, model):
        CALLS.append(("prepare", "fakequant"))
        return model


@hookimpl
def tune_load_model(name, settings, ctx, want):
    from tune.builtin import loader

    if want.weights and want.training:
        CALLS.append(("load", want.quantization))
    # the fake config is not a real one: load full precision
    plain = Load(weights=want.weights, training=want.training, dtype=want.dtype)
    return loader.tune_load_model(loader.TransformersLoaderSettings(), ctx, plain)


@hookimpl
def tune_evaluate(names, settings, model, data, ctx):
    out = {}
    if "weight_norm" in names:
        out["weight_norm"] = float(
            sum(
                float(p.detach().float().norm() ** 2) for p in model.parameters() if p.requires_grad
            )
            ** 0.5
        )
    if "probe" in names:
        import torch

        with torch.no_grad():
            PROBES.append(model(input_ids=torch.tensor(PROBE_IDS)).logits.float().cpu())
        out["probe"] = float(PROBES[-1].abs().mean())
    if "also_loss" in names:
        out["eval_loss"] = 0.0
    return out
