"""What the recipe decides for `tune estimate`, resolved for the target device.

The chosen backends stay in the setup as they were selected (backend + settings) and are asked
for their terms each time the terms are counted, so a what-if (the advice, the largest
micro-batch) is a `dataclasses.replace` of the setup. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tune.contract.capabilities import Capabilities
from tune.contract.memory import AdapterSize, ModelShape

LEAN_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # the gated MLPs tune.train.lean changes


@dataclass
class Setup:
    """What the recipe decides, resolved for the target device (gpu: bf16 auto; cpu: fp32)."""

    shapes: ModelShape
    adapters: list[AdapterSize]
    device: str  # "gpu" | "cpu"
    ranks: int
    weight_dtype: str
    precision: str
    master_fp32: bool
    quantization: Any  # the selected quantization (tune.recipe.Selected), or None
    optimizer: Any  # the selected optimizer
    strategy: Any  # the selected strategy
    micro_batch: int
    seq: int
    checkpointing: bool
    chunked: bool
    lean: bool = False  # [train] lean_activations applies to this model's MLPs
    notes: list[str] = field(default_factory=list)
    grad_accum: int = 1
    gpus: int = 1  # devices asked for (--gpus), even where the strategy uses one
    file_dtype: str = "float32"  # dtype of the checkpoint on disk
    sequences: int = 1  # sequences per example (the objective's sequences_per_example)
    chunkable: bool = False  # the chunked loss is exact here and the objective takes it
    loader: str = ""  # the recipe's loader: quantizations and adapters may be scoped to it
    path: str = ""  # the recipe, for messages
    tiled: bool = False  # [train] tiled_mlp: the MLP runs over tiles recomputed in backward
    tile_tokens: int = 1024  # [train] tiled_mlp_tokens
    # [strategy] sequence_parallel: each rank holds seq / N positions of every sequence
    sequence_parallel: int = 1

    @property
    def local_seq(self) -> int:
        """Positions of each sequence one rank holds: what its activations, logits and the
        other sequence-proportional terms scale with (attention holds the whole sequence for
        heads / N, the same bytes as seq / N positions of all heads)."""
        n = max(1, self.sequence_parallel)
        return -(-self.seq // n)

    @property
    def quantize(self) -> str | None:
        """The [model] quantize name, or None."""
        return self.quantization.backend.name if self.quantization is not None else None


def build_setup(recipe: Any, shapes: ModelShape, device: str, ranks: int) -> Setup:
    """What the recipe decides, resolved for `device` ("gpu" or "cpu")."""
    from tune.estimate.contrib import adapter_sizes

    loader = recipe.backends.get("loader")
    dtype = getattr(loader.settings, "dtype", "auto") if loader else "auto"
    if dtype == "auto":
        dtype = "bfloat16" if device == "gpu" else "float32"
    precision = recipe.train.precision
    if precision == "auto":
        precision = "bf16" if device == "gpu" else "fp32"
    notes: list[str] = []
    strategy = recipe.selected("strategy")
    gpus = ranks
    if strategy.capabilities.processes == "one":
        if ranks > 1:
            notes.append(
                f"strategy {strategy.backend.name} runs one process on one device: --gpus "
                f"{ranks} needs a multi-process strategy (the advice below tries the installed "
                "ones)."
            )
        ranks = 1
    objective = recipe.backends.get("objective")
    caps = objective.capabilities if objective is not None else Capabilities()
    exact = chunk_exact(shapes)
    chunkable = exact and caps.full_logits is False
    if recipe.train.chunked_loss and not exact:
        notes.append("the chunked loss is not exact for this model type: full logits counted.")
    elif recipe.train.chunked_loss and not chunkable:
        name = objective.backend.name if objective is not None else "(none)"
        notes.append(
            f"objective {name} computes the full logits: counted whole."
            if caps.full_logits
            else f"objective {name} does not declare full_logits: its full logits are "
            "counted, to be safe."
        )
    setup = Setup(
        shapes=shapes,
        adapters=[],
        device=device,
        ranks=ranks,
        weight_dtype=dtype,
        precision=precision,
        master_fp32=recipe.train.master_weights == "fp32",
        quantization=recipe.backends.get("quantization"),
        optimizer=recipe.selected("optimizer"),
        strategy=strategy,
        micro_batch=recipe.train.micro_batch_size,
        seq=recipe.model.max_seq_len,
        checkpointing=recipe.train.gradient_checkpointing,
        chunked=bool(recipe.train.chunked_loss) and chunkable,
        lean=bool(recipe.train.lean_activations)
        and not recipe.train.compile
        and shapes.config.get("model_type") in LEAN_TYPES
        and shapes.config.get("hidden_act", "silu") == "silu",
        notes=notes,
        grad_accum=recipe.train.grad_accum,
        gpus=gpus,
        file_dtype=str(shapes.config.get("torch_dtype") or shapes.config.get("dtype") or "float32"),
        sequences=max(1, int(caps.sequences_per_example)),
        chunkable=chunkable,
        loader=recipe.model.loader,
        path=str(recipe.path),
        tiled=bool(recipe.train.tiled_mlp),
        tile_tokens=recipe.train.tiled_mlp_tokens,
        sequence_parallel=int(getattr(strategy.settings, "sequence_parallel", 1) or 1),
    )
    if setup.sequence_parallel > 1:
        notes.append(
            f"sequence_parallel = {setup.sequence_parallel}: activations, logits and the "
            f"other sequence-proportional terms count {setup.local_seq:,} of the "
            f"{setup.seq:,} positions per rank."
        )
    setup.adapters = adapter_sizes(setup, recipe.backends.get("adapt", []))
    return setup


def chunk_exact(shapes: ModelShape) -> bool:
    """The core's chunked loss is exact for this model (else the model's own loss runs)."""
    try:
        from tune.train.chunked_loss import EXACT_TYPES, POST_HEAD_KEYS
    except ImportError:  # pragma: no cover - a core without the chunked loss
        return False
    cfg = shapes.config
    return shapes.model_type in EXACT_TYPES and not any(cfg.get(k) for k in POST_HEAD_KEYS)
