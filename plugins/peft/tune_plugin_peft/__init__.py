"""`[[adapt]] method = "lora" | "dora" | "ia3" | "loha" | "lokr"` through PEFT.

The adapter is saved by PEFT itself (`final/` holds adapter_config.json and
adapter_model.safetensors), so `PeftModel.from_pretrained` loads it with tune uninstalled.
Each method declares `recognizes=`: `tune merge` and `tune chat` open a PEFT adapter directory
any tool wrote. Imports no torch or peft at module level.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from tune.plugin import Settings, TuneError, hookimpl

TUNE_API = ">=2,<3"

Targets = Literal["all-linear"] | list[str] | None


class _Settings(Settings):
    targets: Targets = Field(
        None,
        description='"all-linear", a list of module names, or None for the architecture default',
    )
    modules_to_save: list[str] | None = Field(None, description="modules trained in full and saved")
    layers_to_transform: list[int] | None = None
    experts: bool | None = Field(
        None,
        description="adapt a mixture-of-experts model's fused expert weights (LoRA through PEFT's "
        'target_parameters); None: yes when targets = "all-linear"',
    )
    router: bool = Field(False, description="adapt the MoE router too (off: it stays as trained)")


class LoraSettings(_Settings):
    r: int = Field(16, ge=1)
    alpha: float | None = Field(None, description="lora_alpha; None = r (scale 1)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = Field(False, description="rank-stabilized scaling alpha/sqrt(r)")
    init: Literal["default", "gaussian", "pissa", "olora", "eva", "orthogonal"] = "default"
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)


class IA3Settings(_Settings):
    feedforward_modules: list[str] | None = Field(
        None, description="which targets are feed-forward (scaled on input); None = default"
    )
    init_ia3_weights: bool = True


class LohaSettings(_Settings):
    r: int = Field(8, ge=1)
    alpha: float | None = None
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0)


class LokrSettings(LohaSettings):
    decompose_both: bool = False
    decompose_factor: int = -1


METHODS: dict[str, type[BaseModel]] = {
    "lora": LoraSettings,
    "dora": LoraSettings,
    "ia3": IA3Settings,
    "loha": LohaSettings,
    "lokr": LokrSettings,
}
DOCS = {
    "lora": "LoRA (rsLoRA with use_rslora = true)",
    "dora": "DoRA: weight-decomposed LoRA",
    "ia3": "IA3: learned rescaling vectors",
    "loha": "LoHa: low-rank Hadamard product",
    "lokr": "LoKr: low-rank Kronecker product",
}


@hookimpl
def tune_provide(provide):
    from tune_plugin_peft import memory

    for method, settings in METHODS.items():
        # mergeable (the default): every method folds into the base weights (tune_merge_adapter)
        provide.adapter(
            method,
            settings,
            doc=DOCS[method],
            requires=("peft",),
            recognizes=recognize_adapter,
            estimate=memory.ESTIMATES[method],
        )


def peft_config(method: str, settings: Any, model: Any = None, where: str = "[[adapt]]"):
    """The PEFT config object for one recipe step (targets resolved on `model` when it is a
    mixture-of-experts model: see targets.py)."""
    import peft

    modules, parameters = settings.targets, []
    if model is not None:
        from tune_plugin_peft.targets import resolve

        modules, parameters = resolve(model, settings.targets, settings.experts, settings.router)
    if parameters and method != "lora":
        if settings.experts:
            raise TuneError(
                f"{method} cannot adapt fused expert weights: PEFT reaches them with LoRA only.",
                where=f"{where} experts",
                fix='use method = "lora" for the experts, or set experts = false.',
            )
        parameters = []  # the default with all-linear: the experts stay frozen (run says so)
    if parameters and settings.dropout:
        raise TuneError(
            f"lora dropout {settings.dropout} cannot apply to fused expert weights (PEFT adds "
            "their update to the weight, so there is no input to drop).",
            where=f"{where} dropout",
            fix="set dropout = 0.0, or experts = false to leave the experts out.",
        )
    common = {
        "task_type": peft.TaskType.CAUSAL_LM,
        "target_modules": modules,
        "modules_to_save": settings.modules_to_save,
    }
    if parameters:
        common["target_parameters"] = parameters
    if settings.layers_to_transform is not None:
        common["layers_to_transform"] = settings.layers_to_transform
    if method in ("lora", "dora"):
        init: Any = True if settings.init == "default" else settings.init
        return peft.LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha if settings.alpha is not None else settings.r,
            lora_dropout=settings.dropout,
            bias=settings.bias,
            use_rslora=settings.use_rslora,
            use_dora=method == "dora",
            init_lora_weights=init,
            rank_pattern=settings.rank_pattern,
            alpha_pattern=settings.alpha_pattern,
            **common,
        )
    if method == "ia3":
        return peft.IA3Config(
            feedforward_modules=settings.feedforward_modules,
            init_ia3_weights=settings.init_ia3_weights,
            **common,
        )
    cls = peft.LoHaConfig if method == "loha" else peft.LoKrConfig
    extra = (
        {"decompose_both": settings.decompose_both, "decompose_factor": settings.decompose_factor}
        if method == "lokr"
        else {}
    )
    return cls(
        r=settings.r,
        alpha=settings.alpha if settings.alpha is not None else settings.r,
        rank_dropout=settings.dropout,
        module_dropout=settings.module_dropout,
        **extra,
        **common,
    )


@hookimpl
def tune_adapt_model(name, settings, model, ctx):
    import peft

    base = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    config = peft_config(name, settings, base, where=f"{ctx.recipe.path}: [[adapt]] {name}")
    if isinstance(model, peft.PeftModel):
        # A second PEFT step on the same model becomes a second named adapter.
        model.add_adapter(f"adapt{len(model.peft_config)}", config)
        return model
    import torch

    # The adapter's initial weights depend on the recipe's seed alone, not on what loading drew
    # from the RNG before (a ZeRO-3 build under zero.Init draws differently from a plain
    # load): every strategy starts from the same adapter, so their steps can be compared.
    torch.manual_seed(ctx.recipe.train.seed)
    model = peft.get_peft_model(model, config)
    if ctx.recipe.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        # Frozen embeddings + checkpointing: inputs must carry grad so LoRA layers get one.
        model.enable_input_require_grads()
    trainable, total = model.get_nb_trainable_parameters()
    ctx.print(f"peft {name}: {trainable:,} trainable of {total:,} ({100 * trainable / total:.3f}%)")
    from tune_plugin_peft.targets import reach

    line, experts_reached = reach(model)
    ctx.print(f"peft {name}: {line}", markup=False)
    if experts_reached is False:
        ctx.print(
            f"[yellow]warning:[/yellow] this mixture-of-experts model's experts are not adapted "
            f"by [[adapt]] {name}: most of its parameters stay frozen. Use targets = "
            '"all-linear" (experts included) or experts = true with method = "lora".'
        )
    return model


@hookimpl
def tune_merge_adapter(name, settings, model, adapter_dir, ctx):
    import peft

    return peft.PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


def recognize_adapter(path):
    """A PEFT adapter directory saved by any tool: the recipe table of its base model and
    method, from PEFT's own adapter_config.json (so `tune merge` and `tune chat` open it);
    None for any other directory."""
    import json
    from pathlib import Path

    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise TuneError(
            "adapter_config.json has no base_model_name_or_path.",
            where=str(config_file),
            fix="merge from the tune run directory instead, which records the base.",
        )
    method = str(config.get("peft_type", "lora")).lower()
    if method == "lora" and config.get("use_dora"):
        method = "dora"
    return {"model": {"path": base}, "adapt": [{"method": method}]}
