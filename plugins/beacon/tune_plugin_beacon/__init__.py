"""`[[adapt]] method = "beacon"`: Activation Beacon long context, plus `passkey` and `long_ppl`.

The model code is in `model.py`; this module declares the backends and wires them into tune.
The adapter declares `extends_positions` (a recipe may train beyond the base model's positions)
and `mergeable=False` (it adds modules the base architecture lacks: `tune merge` keeps its files
beside the merged model, and the core refuses exporting it as a plain model before loading).
Imports no torch at module level.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from tune.plugin import Capabilities, Settings, hookimpl, keep_trainable

TUNE_API = ">=2,<3"

BEACON_FILE, CONFIG_FILE = "beacon.safetensors", "beacon.json"


class BeaconSettings(Settings):
    window: int = Field(1024, ge=8, description="raw tokens per window")
    stride: int | None = Field(None, description="= window (other strides are not supported)")
    ratios: list[int] = Field(
        default_factory=lambda: [2, 4, 8, 16, 32], description="training ratios; 0 = keep raw KV"
    )
    ratio_mix: Literal["step-random", "fixed"] = "step-random"
    inference_ratio: int | Literal["adapt"] = Field(
        "adapt",
        description='ratio at eval/generation, or "adapt": the smallest ratio that keeps the '
        "input (plus the tokens to generate) inside the base model's positions, chosen once "
        "per sequence",
    )
    adapt_headroom: int = Field(
        1024, ge=0, description='"adapt" without generation: tokens to leave room for'
    )
    pos: Literal["interleave", "append"] = "interleave"
    attn: Literal["full-coverage", "step-expansion"] = "full-coverage"
    params: list[Literal["q", "k", "v", "o"]] = Field(default_factory=lambda: ["q", "k", "v"])
    sink_size: int | None = Field(
        None,
        ge=0,
        description="first tokens kept in memory as attention sinks; unset: by architecture "
        "(1 for Llama-3, which the authors found needs a sink; 0 for Llama-2, Mistral, Qwen2)",
    )
    only_train_beacon: bool = True
    init_from: str | None = Field(
        None,
        description="a finished run's final/ (or any folder with beacon.safetensors) whose "
        "beacon weights start this run: stage 2 after stage 1",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.stride is not None and self.stride != self.window:
            raise ValueError("stride must equal window (the released Activation Beacon setting)")
        if not [r for r in self.ratios if r == 0 or self.window % r == 0]:
            raise ValueError(f"no ratio in {self.ratios} divides window {self.window}")
        return self


class PasskeySettings(Settings):
    lengths: list[int] = Field(
        default_factory=lambda: [1024, 2048, 4096], description="prompt tokens"
    )
    depths: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9])
    trials: int = Field(2, ge=1, description="keys per (length, depth) cell")
    seed: int = 0


class LongPplSettings(Settings):
    buckets: list[int] = Field(
        default_factory=lambda: [1024, 4096, 16384, 65536], description="upper edges"
    )


@hookimpl
def tune_provide(provide):
    provide.adapter(
        "beacon",
        BeaconSettings,
        doc="Activation Beacon long context (Llama, Mistral, Qwen2)",
        capabilities=Capabilities(
            extends_positions=True,
            mergeable=False,
            why={"mergeable": "the beacon adds modules the base architecture does not have"},
        ),
    )
    provide.metric(
        "passkey", PasskeySettings, doc="5-digit passkey retrieval accuracy by length and depth"
    )
    provide.metric(
        "long_ppl",
        LongPplSettings,
        doc="perplexity on long eval text by position bucket",
        capabilities=Capabilities(
            scores=("lm",), why={"scores": "it scores the next-token loss of lm examples"}
        ),
    )


def to_config(settings: BeaconSettings, seed: int = 0):
    from tune_plugin_beacon.model import BeaconConfig

    data = settings.model_dump(exclude={"only_train_beacon", "init_from"})
    return BeaconConfig(**data, seed=seed)


@hookimpl
def tune_adapt_model(name, settings, model, ctx):
    from tune_plugin_beacon.model import attach, beacon_parameters

    attach(model, to_config(settings, ctx.recipe.train.seed))
    if settings.init_from:
        load_beacon_weights(model, settings.init_from, ctx)
    if settings.only_train_beacon:
        for param in model.parameters():
            param.requires_grad_(False)
    params = list(beacon_parameters(model).values())
    for param in params:
        param.requires_grad_(True)
    keep_trainable(params)  # stays trainable if LoRA follows
    n = sum(p.numel() for p in params)
    cfg = model.beacon_config
    ctx.print(
        f"beacon: window {cfg.window}, ratios {cfg.ratios}, {cfg.pos} + {cfg.attn}, sink "
        f"{cfg.sink_size}{'' if settings.sink_size is not None else ' (by architecture)'}, "
        f"inference ratio {cfg.inference_ratio}; {n:,} beacon parameters"
    )
    return model


@hookimpl
def tune_save_extras(model, path, ctx):
    """final/beacon.safetensors + beacon.json: the beacon weights, loadable onto the base."""
    from tune_plugin_beacon.model import find_beacon_model

    inner = find_beacon_model(model)
    if inner is None:
        return
    save_beacon(inner, path)


@hookimpl
def tune_merge_adapter(name, settings, model, adapter_dir, ctx):
    """The beacon cannot fold into the base weights: attach it with its trained weights."""
    return load_beacon(model, adapter_dir)


def save_beacon(model, path) -> None:
    import dataclasses
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from tune_plugin_beacon.model import beacon_parameters

    state = {
        _canonical(n): p.detach().cpu().contiguous()
        for n, p in beacon_parameters(model).items()
        if "lora_" not in n  # LoRA on a beacon projection belongs to the PEFT adapter
    }
    save_file(state, str(Path(path) / BEACON_FILE))
    (Path(path) / CONFIG_FILE).write_text(
        json.dumps(dataclasses.asdict(model.beacon_config), indent=2)
    )


def _canonical(name: str) -> str:
    """Parameter names relative to the causal LM, whatever wraps it (PEFT, DDP)."""
    for marker in ("model.layers.", "model.beacon_embedding"):
        if marker in name:
            head = name[name.index(marker) :]
            return head.replace(".base_layer", "")
    return name


def load_beacon_weights(model, folder: str, ctx) -> None:
    """Copy a previous run's trained beacon weights into the freshly attached beacon."""
    from pathlib import Path

    from safetensors.torch import load_file
    from tune.plugin import TuneError

    path = Path(folder).expanduser()  # relative to the working directory, like output_dir
    file = path / BEACON_FILE
    where = f"{ctx.recipe.path}: [[adapt]] beacon init_from"
    if not file.is_file():
        raise TuneError(
            f"init_from = {folder!r}: there is no {BEACON_FILE} in {path}.",
            where=where,
            fix="point init_from at the final/ folder of a finished beacon run (or a checkpoint "
            "folder that holds beacon.safetensors), e.g. runs/llama-longctx/final.",
        )
    state = load_file(str(file))
    own = set(model.state_dict())
    wrong = sorted(k for k in state if k not in own)
    if wrong:
        raise TuneError(
            f"init_from = {folder!r}: its beacon weights do not fit this model "
            f"({len(wrong)} names unknown, e.g. {wrong[0]}).",
            where=where,
            fix="start from a beacon run of the same base model and the same beacon params.",
        )
    model.load_state_dict(state, strict=False)
    ctx.print(f"beacon: weights from {file}")


def load_beacon(model, path):
    """Attach the saved beacon (config + weights) to a freshly loaded base model."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from tune_plugin_beacon.model import BeaconConfig, attach

    cfg = BeaconConfig(**json.loads((Path(path) / CONFIG_FILE).read_text()))
    attach(model, cfg)
    state = load_file(str(Path(path) / BEACON_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in state if k in unexpected]
    if wrong:
        raise RuntimeError(f"beacon weights do not fit this model: {wrong[:3]}")
    return model


@hookimpl
def tune_evaluate(names, settings, model, data, ctx):
    out = {}
    if "passkey" in names:
        from tune_plugin_beacon.metrics import passkey

        out.update(passkey(model, data, settings["passkey"], ctx))
    if "long_ppl" in names:
        from tune_plugin_beacon.metrics import long_ppl

        out.update(long_ppl(model, data, settings["long_ppl"]))
    return out or None
