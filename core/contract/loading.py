"""What the core asks a loader for (`Load`), what a loader may answer (`Loaded`), and marking
weights that stay trainable through the adapt chain. Imports no torch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

KEEP_TRAINABLE = "_tune_keep_trainable"


@dataclass(frozen=True)
class Load:
    """The request of one `tune_load_model` call.

    - `weights`: False asks for the tokenizer alone (`tune data preview`, `tune data stats`):
      answer `(None, tokenizer)` without reading any weight.
    - `training`: False asks for the base as merge, chat and export need it: unquantized, no
      gradient checkpointing, weights in `dtype` ("bfloat16", "float16" or "float32").
    - `quantization`: for training, the config the quantization backend built (e.g. a
      transformers `BitsAndBytesConfig`), to pass to the library; None when not quantized.
    """

    weights: bool = True
    training: bool = True
    dtype: str | None = None
    quantization: Any = None


@dataclass
class Loaded:
    """A loader's answer when it has more to say than `(model, tokenizer)`.

    `prepare_generation(model)` returns the trained model ready for the closing sample
    generation (e.g. Unsloth's fast inference mode); None keeps the model as it is.
    """

    model: Any
    tokenizer: Any
    prepare_generation: Callable[[Any], Any] | None = None


def as_loaded(answer: Any) -> Loaded:
    """A loader's answer, whichever form it took."""
    if isinstance(answer, Loaded):
        return answer
    model, tokenizer = answer
    return Loaded(model, tokenizer)


def keep_trainable(params: Iterable[Any]) -> None:
    """Mark parameters that stay trainable whatever later [[adapt]] steps freeze (a beacon's
    own weights when LoRA follows and freezes everything else)."""
    for param in params:
        setattr(param, KEEP_TRAINABLE, True)


def kept_trainable(param: Any) -> bool:
    return bool(getattr(param, KEEP_TRAINABLE, False))
