"""Setting up a run: the model chain, parameter groups, scheduler, trackers.

strategy (already set up) -> quantization (its config) -> load -> k-bit preparation -> adapt
chain -> trainable weights -> optimizer -> scheduler. Every backend is called through its own
plugin (a hook) or built from its declared class.
"""

from __future__ import annotations

from typing import Any

from tune.contract.context import RunContext
from tune.contract.loading import Load, Loaded, as_loaded, kept_trainable
from tune.contract.tracker import Trackers
from tune.errors import TuneError
from tune.recipe import Recipe


def upcast_trainable(params: list[Any]) -> None:
    """Keep trainable weights in float32; autocast still computes in 16 bits.

    An optimizer step on bf16 weights rounds away any update below 1/256 of the weight (an
    Adam step of 1e-3 never moves a norm weight of 1.0), so a full fine-tune of a bf16-loaded
    model learns only the coarse part of what it should. Frozen weights stay as loaded.
    """
    import torch

    for param in params:
        if param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()


def build_model(pm: Any, recipe: Recipe, ctx: RunContext) -> tuple[Loaded, Any]:
    """(the model and tokenizer loaded, quantized and adapted as the recipe says; the
    quantization backend's object or None)."""
    quantization = None
    if recipe.backends.get("quantization") is not None:
        quantization = pm.build(recipe.selected("quantization"), ctx)
    want = Load(quantization=quantization.config() if quantization is not None else None)
    loaded = as_loaded(pm.call("tune_load_model", recipe.selected("loader"), ctx=ctx, want=want))
    model = loaded.model
    from tune.model.checks import check_positions

    config = getattr(model, "config", None)
    if recipe.model.rope_scaling is None:
        positions = getattr(config, "max_position_embeddings", None)
        check_positions(recipe, positions, str(recipe.model.path))
    else:  # the loader checked max_seq_len against the scaling; did it apply it?
        check_rope_applied(recipe, config)
    if quantization is not None:
        model = quantization.prepare(model)
    for selected in recipe.backends["adapt"]:
        model = pm.call("tune_adapt_model", selected, model=model, ctx=ctx)
    for param in model.parameters():
        if kept_trainable(param):
            param.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TuneError(
            "the model has no trainable parameters after the [[adapt]] steps.",
            where=str(recipe.path),
            fix="check the adapt chain (e.g. only_train_* options) or remove quantize for "
            "full fine-tuning.",
        )
    if recipe.train.master_weights == "fp32":
        upcast_trainable(trainable)
    if recipe.train.tiled_mlp:  # before compile (traced as tiled) and lean (tiles keep less)
        tile_mlps(model, recipe, ctx)
    if recipe.train.offload_activations and not offloads(ctx.world.device):
        ctx.print(
            "offload_activations: the activations already live in host memory on "
            f"{ctx.world.device}; nothing to offload (it takes effect on a GPU)."
        )
    if recipe.train.compile:
        ctx.print(f"compile: {compile_model(model)}")
    elif recipe.train.lean_activations:  # compiled layers fuse and save less on their own
        from tune.train.lean import apply_lean_activations

        apply_lean_activations(model)
    loaded.model = model
    return loaded, quantization


def offloads(device: str) -> bool:
    """Whether `[train] offload_activations` moves anything: only from an accelerator."""
    return not str(device).startswith("cpu")


def activation_offload(recipe: Recipe, device: str) -> Any:
    """The context a micro-batch's forward runs in: with `[train] offload_activations` on an
    accelerator, every tensor autograd saves for backward is copied to pinned host memory and
    back when backward needs it (`torch.autograd.graph.save_on_cpu`). With gradient
    checkpointing that is each decoder layer's input (transformers' checkpointing saves it
    through the saved-tensor hooks) plus the few tensors outside the layers: device memory then
    holds one layer's activations at a time, whatever the number of layers. Exact."""
    import contextlib

    if not (recipe.train.offload_activations and offloads(device)):
        return contextlib.nullcontext()
    import torch

    return torch.autograd.graph.save_on_cpu(pin_memory=True)


def check_rope_applied(recipe: Recipe, config: Any) -> None:
    """A loader that does not write `[model] rope_scaling` into the model is refused, rather
    than training unscaled positions beyond the model's reach."""
    spec = recipe.model.rope_scaling or {}
    wanted = spec.get("type", spec.get("rope_type"))
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    have = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    if have != wanted:
        raise TuneError(
            f"[model] rope_scaling asks for {wanted!r} RoPE, but the loader "
            f"'{recipe.model.loader}' built a model with {have or 'default'!r} RoPE.",
            where=f"{recipe.path}: [model] rope_scaling",
            fix='use loader = "transformers", or that loader\'s own way to scale RoPE.',
        )


def tile_mlps(model: Any, recipe: Recipe, ctx: RunContext) -> None:
    """`[train] tiled_mlp`: every decoder layer's MLP over tiles of tokens (tune.train.tiled)."""
    from tune.train.tiled import apply_tiled_mlp, tile_count

    tokens = recipe.train.tiled_mlp_tokens
    count = 0
    if ctx.world.world_size > 1:  # the same number of calls on every rank (ZeRO-3 gathers)
        rows = max(recipe.train.micro_batch_size, recipe.eval.batch_size)
        count = tile_count(rows, recipe.model.max_seq_len, tokens)
    _, moe = apply_tiled_mlp(decoder_layers(model), tokens, count, where=str(recipe.path))
    if moe:
        ctx.print(
            f"tiled_mlp: {moe} mixture-of-experts MLPs are left untiled (routed per token).",
            highlight=False,
        )


def decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks of a model: the longest ModuleList whose entries share one class."""
    import torch

    best: list[Any] = []
    for module in model.modules():
        is_list = isinstance(module, torch.nn.ModuleList) and len(module) > len(best)
        if is_list and len({type(m) for m in module}) == 1:
            best = list(module)
    return best


def compile_model(model: Any) -> str:
    """torch.compile each decoder layer in place, with dynamic shapes.

    Layers, not the whole model: the loss, the output head (which the chunked loss swaps per
    call) and the wrappers stay eager, so nothing recompiles per step; module names, state-dict
    keys and PEFT saving are unchanged (in-place `Module.compile`). `dynamic=True` from the
    first call: packing and length grouping give a new sequence length almost every step.
    """
    layers = decoder_layers(model)
    if not layers:
        model.compile(dynamic=True)
        return "the whole model (no decoder layers found)"
    for layer in layers:
        layer.compile(dynamic=True)
    return f"{len(layers)} decoder layers ({type(layers[0]).__name__}), dynamic shapes"


def count_parameters(model: Any, quantization: Any = None) -> tuple[int, int]:
    """(trainable, total) values held, asking the quantization about packed storage."""
    numel = quantization.numel if quantization is not None else (lambda p: p.numel())
    trainable = total = 0
    for param in model.parameters():
        n = numel(param)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable weights in two groups: decay on matrices, none on biases and norms."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = (
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    )
    return [g for g in groups if g["params"]]


def build_scheduler(recipe: Recipe, optimizer: Any, total_steps: int) -> Any:
    from transformers import get_scheduler

    sch = recipe.scheduler
    warmup = sch.warmup_steps or int(round(sch.warmup_ratio * total_steps))
    extra = {"power": sch.power, "lr_end": sch.lr_end} if sch.name == "polynomial" else None
    return get_scheduler(
        sch.name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=extra,
    )


def build_trackers(pm: Any, recipe: Recipe, ctx: RunContext) -> Trackers:
    """metrics.jsonl plus every `[[track]]`, on the main process; none elsewhere. A tracker
    that cannot be built is dropped with one warning, as one that fails later is."""
    if not ctx.world.is_main:
        return Trackers({}, ctx.console)
    trackers = {"jsonl": pm.build(_jsonl(pm), ctx)}
    for selected in recipe.backends.get("track", []):
        name = selected.backend.name
        if name in trackers:
            continue
        try:
            trackers[name] = pm.build(selected, ctx)
        except TuneError:
            raise
        except Exception as exc:  # a tracker never stops training, not even when built
            ctx.print(
                f"[yellow]warning:[/yellow] tracker '{name}' could not start "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                "it is off for this run, metrics.jsonl keeps everything.",
                markup=True,
                highlight=False,
            )
    return Trackers(trackers, ctx.console)


def _jsonl(pm: Any) -> Any:
    from tune.recipe import Selected

    backend = pm.backend("tracker", "jsonl")
    return Selected(backend, backend.settings())


def load_tokenizer(pm: Any, recipe: Recipe, ctx: RunContext) -> Any:
    """The loader's tokenizer alone, no weights read (`tune data preview`, `stats`)."""
    loaded = as_loaded(
        pm.call("tune_load_model", recipe.selected("loader"), ctx=ctx, want=Load(weights=False))
    )
    return loaded.tokenizer
