"""k-quants (q4_k_m, q5_k_m, q6_k, ...) by llama.cpp's own quantizer, through llama-cpp-python.

The `gguf` package has no k-quant encoder, and a k-quant file is more than an encoding: llama.cpp
picks a type per tensor (more bits for attn_v and ffn_down in some layers, a fallback type for
rows not a multiple of 256, the output kept wider). So tune writes its f16 file and hands it to
`llama_model_quantize`, the function `llama-quantize` calls, from the `llama-cpp-python`
package (the gguf plugin's `llama` extra: it builds llama.cpp from source).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from tune.plugin import TuneError

EXTRA = "tune-plugin-gguf[llama]"  # pip install 'tune-plugin-gguf[llama]' -> llama-cpp-python


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def refuse_without_llama(quant: str, where: str) -> None:
    """One paragraph when `quant` needs llama.cpp's quantizer and llama-cpp-python is missing."""
    if available():
        return
    raise TuneError(
        f"--quant {quant} is made by llama.cpp's own quantizer (it picks a type per tensor; the "
        "`gguf` package has no k-quant encoder), which tune calls through llama-cpp-python, "
        "not installed here.",
        where=where,
        fix=f"pip install '{EXTRA}' (builds llama.cpp from source, several minutes on CPU), or "
        "export --quant f16 / q8_0, which need no llama.cpp.",
    )


def ftype(quant: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if value is None:
        raise TuneError(
            f"--quant {quant} is not a file type of the installed llama.cpp "
            f"(llama-cpp-python {getattr(llama_cpp, '__version__', '?')}).",
            where="tune export --quant",
            fix="pick q4_k_m, q5_k_m, q6_k or q8_0, or upgrade llama-cpp-python.",
        )
    return int(value)


def quantize(source: Path, out: Path, quant: str, imatrix: dict[str, Any] | None = None) -> None:
    """Write `source` (a tune f16/f32 GGUF) as `quant` to `out` with llama.cpp's quantizer.

    `imatrix`: GGUF tensor name -> per-input-column mean of squared activations (float32), which
    llama.cpp weighs the rounding error with (an importance matrix)."""
    import ctypes

    import llama_cpp
    import numpy as np

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(quant)
    params.nthread = os.cpu_count() or 1
    keep: list[Any] = []  # the arrays the C struct points into, alive until the call returns
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            array = np.ascontiguousarray(values, dtype=np.float32)
            keep += [array, name.encode()]
            entries[i].name = keep[-1]
            entries[i].data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = array.size
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    log: list[str] = []
    with _captured(log):
        code = llama_cpp.llama_model_quantize(
            str(source).encode(), str(out).encode(), ctypes.byref(params)
        )
    if code != 0:
        raise RuntimeError(f"llama_model_quantize({quant}) returned {code}:\n{log[0][-4000:]}")


@contextlib.contextmanager
def _captured(log: list[str]):
    """llama.cpp's log (written to stderr by C code) kept aside in `log`; shown on failure."""
    import sys

    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            log.append(sink.read().decode(errors="replace"))
