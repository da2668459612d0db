"""The recipe's core tables: what the core owns in each; the rest belongs to the chosen backend.

Each backend table has one selector key (`loader`, `method`, `format`, `name`, `quantize`);
the core owns a few documented keys of the table and everything else goes to the selected
backend, validated by the settings model its plugin declared. Imports no torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Open(BaseModel):
    """A table whose extra keys belong to the selected backend."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class ModelSection(Open):
    loader: str = "transformers"
    path: str = Field(
        description="hub id, local directory, a .gguf file, or tune:tiny-llama/-qwen2/-mistral"
    )
    gguf_file: str | None = Field(
        None, description="a GGUF file in the `path` folder or hub repo: loaded dequantized"
    )
    quantize: str | None = None
    quantization: dict[str, Any] = Field(default_factory=dict)
    max_seq_len: int = Field(2048, gt=0)
    rope_scaling: dict[str, Any] | None = Field(
        None,
        description='stretch RoPE positions, e.g. { type = "yarn", factor = 4.0 }: linear, '
        "dynamic, yarn, llama3, longrope (type or rope_type); the model then reaches original "
        "positions x factor",
    )


class AdaptStep(Open):
    method: str


class SourceTable(Open):
    """`[data.source]`: where rows come from; the other keys are that source's settings."""

    name: str = "files"


def _source_table(value: Any) -> Any:
    """`source = "hub"` is short for a `[data.source]` table with only `name = "hub"`."""
    return {"name": value} if isinstance(value, str) else value


class _Entry(Open):
    """What `[data]` and each `[[data.mix]]` share: a format, a source and training specs."""

    format: str = "chat"
    train: str | list[str]
    source: SourceTable = Field(default_factory=SourceTable)
    min_tokens: int = Field(
        0,
        ge=0,
        description="drop examples shorter than this many tokens (e.g. long-context training "
        "that needs several windows per document); 0 keeps all",
    )

    weight: float | None = Field(
        None, gt=0, description="mix: sampling probability of this source (normalized over all)"
    )
    epochs: float | None = Field(
        None, gt=0, description="mix: times this source is repeated (0.5 = a seeded half)"
    )

    _coerce_source = field_validator("source", mode="before")(_source_table)

    @model_validator(mode="after")
    def _weight_or_epochs(self):
        if self.weight is not None and self.epochs is not None:
            raise ValueError("give a source either weight (a sampling probability) or epochs")
        return self

    @property
    def train_files(self) -> list[str]:
        """The train specs (file paths for the files source), always a list."""
        return [self.train] if isinstance(self.train, str) else list(self.train)


class MixSource(_Entry):
    """One more training source, in its own format; its other keys are that format's settings."""

    format: str


class DataSection(_Entry):
    mix: list[MixSource] = Field(
        default_factory=list,
        description="more training sources, each a [[data.mix]] table with its own format",
    )
    eval: str | list[str] | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    shuffle: bool = True
    pack: bool = Field(
        False,
        description="padding-free first-fit packing up to micro_batch_size x max_seq_len tokens",
    )
    group_by_length: bool = Field(
        False, description="padded batches of similar lengths (pack = false)"
    )
    cache: bool = Field(True, description="reuse tokenized examples from the on-disk cache")
    num_proc: int = Field(1, ge=1, description="processes for tokenization")
    streaming: bool = Field(False, description="read rows lazily, tokenize and batch on the fly")

    @model_validator(mode="after")
    def _mix_weights(self):
        weighted = [self.weight is not None] + [m.weight is not None for m in self.mix]
        if any(weighted) and not all(weighted):
            missing = "[data]" if not weighted[0] else f"[[data.mix]] #{weighted.index(False)}"
            raise ValueError(
                f"some sources have a weight and {missing} has none: with weights, every "
                "source (the [data] table and each [[data.mix]]) needs one"
            )
        if any(weighted) and any(m.epochs is not None for m in self.mix):
            raise ValueError("use weights or epochs for the mix, not both")
        return self

    @property
    def eval_files(self) -> list[str]:
        if self.eval is None:
            return []
        return [self.eval] if isinstance(self.eval, str) else list(self.eval)


class OptimizerSection(Open):
    name: str = "adamw"


class ObjectiveSection(Open):
    name: str = "causal_lm"


class SchedulerSection(Strict):
    name: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0)
    power: float = Field(1.0, gt=0, description="polynomial decay power")
    lr_end: float = Field(1e-7, ge=0, description="polynomial decay end value")


class StrategySection(Open):
    name: str = "single"


class TrackEntry(Open):
    name: str


class RewardEntry(Open):
    """One `[[reward]]`: a reward backend, its weight in the sum, its own keys."""

    name: str
    weight: float = Field(1.0, description="weight of this reward in the sum the objective uses")


class RolloutSection(Open):
    """`[rollout]`: the engine that samples completions during online training. Without the
    table, an online objective uses its own plugin's default engine."""

    name: str


class TrainSection(Strict):
    output_dir: str = Field(
        "runs/default", description="where the run writes; `~` is the home folder"
    )

    @field_validator("output_dir")
    @classmethod
    def _a_folder_of_its_own(cls, value: str) -> str:
        """`~` expands; the filesystem root and the home folder are refused (a run owns its
        folder, and --overwrite removes what it wrote there)."""
        import os

        expanded = os.path.expanduser(value)
        if not expanded.strip():
            raise ValueError("output_dir is empty")
        real = os.path.realpath(expanded)
        if real in ("/", os.path.realpath(os.path.expanduser("~"))):
            raise ValueError(
                f"output_dir '{value}' is {'the filesystem root' if real == '/' else 'your home folder'}: "
                "a run needs a folder of its own, e.g. runs/my-run"
            )
        return expanded

    epochs: int = Field(1, ge=1)
    max_steps: int = Field(-1, description="stop after this many optimizer steps; -1 = epochs")
    micro_batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    precision: Precision = "auto"
    master_weights: Literal["fp32", "model"] = Field(
        "fp32",
        description="fp32: 16-bit trainable weights are updated in float32 (mixed precision); "
        "model: updated in the dtype they were loaded in (pure bf16, less memory)",
    )
    gradient_checkpointing: bool = False
    chunked_loss: bool = Field(
        True,
        description="compute the lm-head projection and loss in chunks, never the whole logits "
        "(exact; off = the plain loss)",
    )
    compile: bool = Field(False, description="torch.compile the model (dynamic shapes)")
    lean_activations: bool = Field(
        True,
        description="Llama/Mistral/Qwen gated MLPs keep 2 of their 4 intermediate activations "
        "for backward and recompute the rest (exact; off = autograd's usual)",
    )
    tiled_mlp: bool = Field(
        False,
        description="run each decoder layer's MLP over tiles of tokens, recomputed in backward: "
        "no [tokens, intermediate] tensor is kept or built whole (exact; for long sequences)",
    )
    tiled_mlp_tokens: int = Field(
        1024, ge=16, description="tokens per MLP tile with tiled_mlp (smaller: less memory)"
    )
    offload_activations: bool = Field(
        False,
        description="on a GPU: what autograd keeps for backward (with gradient checkpointing, "
        "each layer's input) goes to pinned host memory and comes back in backward (exact; "
        "long sequences; nothing to do on CPU)",
    )
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 disables clipping")
    seed: int = Field(42, ge=0, lt=2**32, description="0 to 2**32 - 1 (numpy's seed range)")
    log_every: int = Field(1, ge=1)
    save_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    keep_last: int = Field(2, ge=1)
    eval_every: int = Field(0, ge=0, description="evaluate every N steps; 0 = only at the end")
    early_stopping_patience: int = Field(0, ge=0, description="evals without improvement; 0 = off")
    early_stopping_threshold: float = Field(0.0, ge=0.0)


class EvalSection(Open):
    """`metrics` lists metric names; `[eval.<metric>]` tables hold each metric's settings."""

    metrics: list[str] = Field(default_factory=lambda: ["perplexity"])
    max_batches: int = Field(0, ge=0, description="0 = the whole eval set")
    batch_size: int = Field(0, ge=0, description="0 = train.micro_batch_size")


class GenerateSection(Strict):
    prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(48, ge=1)
    every: int = Field(
        0, ge=0, description="also generate every N steps during training; 0 = only at the end"
    )


class RecipeModel(Strict):
    description: str = ""
    model: ModelSection
    adapt: list[AdaptStep] = Field(default_factory=list)
    data: DataSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)
    track: list[TrackEntry] = Field(
        default_factory=list, description="trackers besides metrics.jsonl, one [[track]] each"
    )
    reward: list[RewardEntry] = Field(
        default_factory=list,
        description="online RL: the rewards of completions, one [[reward]] each, weighted",
    )
    rollout: RolloutSection | None = Field(
        None,
        description="online RL: the engine sampling completions (transformers by default)",
    )


# Keys the core owns in each open table; the rest goes to the selected backend.
CORE_KEYS: dict[str, set[str]] = {
    name: set(model.model_fields)
    for name, model in {
        "model": ModelSection,
        "adapt": AdaptStep,
        "data": DataSection,
        "mix": MixSource,
        "source": SourceTable,
        "optimizer": OptimizerSection,
        "objective": ObjectiveSection,
        "strategy": StrategySection,
        "track": TrackEntry,
        "eval": EvalSection,
        "reward": RewardEntry,
        "rollout": RolloutSection,
    }.items()
}
