"""`Quantization`: the object a quantization backend declares (`build=`) for `[model] quantize`.

The core builds it before loading, hands `config()` to the loader (`Load.quantization`), and
after loading lets it `prepare` the model for training. Its optional abilities are methods with
working defaults. Imports no torch.
"""

from __future__ import annotations

from typing import Any


class Quantization:
    """Base class of quantization backends; `settings` are the `[model.quantization]` keys."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        self.settings = settings
        self.ctx = ctx

    def config(self) -> Any:
        """What the loader passes to the library to quantize while loading (e.g. a
        `BitsAndBytesConfig`), or a marker the declaring loader understands."""
        raise NotImplementedError

    def prepare(self, model: Any) -> Any:
        """The just-loaded quantized model made ready for training (k-bit preparation: frozen
        base, fp32 norms, input gradients for checkpointing). Default: as loaded."""
        return model

    # Optional: `dequantize(model) -> model | None`, the loaded quantized model with its
    # quantized layers turned back into plain ones holding the dequantized weights. `tune merge`
    # of a run trained on this quantization then compares folding the adapter into that base
    # (what was trained) with folding it into the 16-bit base, and `--dequantize` writes it.

    def numel(self, param: Any) -> int:
        """How many values a (possibly packed) parameter holds, for honest parameter counts.
        Default: `param.numel()`."""
        return param.numel()
