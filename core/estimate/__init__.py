"""`tune estimate`: per-device training memory from the recipe and the model config alone.

`estimate(recipe, gpus=..., gpu_memory=...)` resolves what the recipe decides for the target
device (a GPU when --gpu-memory is given or one is present, else this machine's host RAM),
builds the memory terms (`tune.estimate.memory`), takes the largest phase as the peak, and says
whether it fits, what to change if not, and the largest micro-batch and sequence length that
fit. Imports no torch (except for a config.json that lacks keys, through transformers).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.errors import TuneError
from tune.estimate.memory import Setup, Term, host_bytes, phase_totals, terms
from tune.estimate.shapes import Adapter, Shapes, adapter_for, read_config, shapes_from_config

GiB = 1 << 30
# Memory a process needs besides its tensors: CUDA context + kernels, or python + torch.
OVERHEAD = {"gpu": 0.75 * GiB, "cpu": 0.5 * GiB}
UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


@dataclass
class Estimate:
    setup: Setup
    terms: list[Term]
    phases: dict[str, float]
    peak: float
    peak_phase: str
    host: float
    capacity: float | None
    capacity_label: str
    fits: bool | None
    advice: list[str] = field(default_factory=list)
    max_micro_batch: int = 0
    max_seq_len: int = 0

    def as_dict(self) -> dict[str, Any]:
        s = self.setup
        return {
            "device": s.device,
            "ranks": s.ranks,
            "peak_bytes": int(self.peak),
            "peak_phase": self.peak_phase,
            "phases": {k: int(v) for k, v in self.phases.items()},
            "offloaded_bytes_per_rank": int(self.host),
            "capacity_bytes": int(self.capacity) if self.capacity else None,
            "capacity": self.capacity_label,
            "overhead_bytes": int(OVERHEAD[s.device]),
            "fits": self.fits,
            "max_micro_batch_size": self.max_micro_batch,
            "max_seq_len": self.max_seq_len,
            "advice": self.advice,
            "notes": s.notes,
            "terms": [
                {
                    "name": t.name,
                    "bytes": int(t.bytes),
                    "formula": t.formula,
                    "phases": list(t.phases),
                    "offloaded": t.host,
                }
                for t in self.terms
            ],
        }


def parse_size(text: str) -> float:
    """'80GB', '80G', '24GiB', '81920MiB' -> bytes (GB = 10^9, GiB = 2^30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not m:
        raise TuneError(
            f"cannot read the memory size '{text}'.",
            where="--gpu-memory",
            fix="write a number with a unit, e.g. 80GB, 24GiB or 40000MiB.",
        )
    number, unit, binary = m.groups()
    scale = (1 << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[unit]) if binary else UNITS[unit]
    size = float(number) * scale
    if size < 1 << 20:
        raise TuneError(
            f"--gpu-memory {text} is {size:,.0f} bytes: no device to train on.",
            where="--gpu-memory",
            fix="give the device's memory, e.g. 80GB or 24GiB.",
        )
    return size


def local_gpus() -> list[float]:
    """Total memory of each local NVIDIA GPU (nvidia-smi; no torch import), or []."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [float(line) * (1 << 20) for line in out.split() if line.strip()]


def host_memory() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def build_setup(recipe: Any, shapes: Shapes, device: str, ranks: int) -> Setup:
    """What the recipe decides, resolved for `device` ("gpu" or "cpu")."""
    loader = recipe.backends.get("loader")
    dtype = getattr(loader.settings, "dtype", "auto") if loader else "auto"
    if dtype == "auto":
        dtype = "bfloat16" if device == "gpu" else "float32"
    precision = recipe.train.precision
    if precision == "auto":
        precision = "bf16" if device == "gpu" else "fp32"
    notes: list[str] = []
    adapters = []
    for i, sel in enumerate(recipe.backends.get("adapt", [])):
        name = sel.backend.name
        if name in ("lora", "dora", "ia3", "loha", "lokr"):
            where = f"{recipe.path}: [[adapt]] {i}"
            adapters.append(adapter_for(name, sel.settings, shapes, where))
        else:
            notes.append(f"[[adapt]] {name} is not counted (its own weights are small).")
    quant = recipe.backends.get("quantization")
    strategy = recipe.strategy.name
    gpus = ranks
    if strategy == "single" and ranks > 1:
        notes.append(
            f"strategy single trains on one device: --gpus {ranks} needs ddp, "
            "deepspeed or fsdp (the advice below tries them)."
        )
    if strategy == "single":
        ranks = 1
    chunked = bool(recipe.train.chunked_loss) and _chunk_exact(shapes)
    if recipe.train.chunked_loss and not chunked:
        notes.append("the chunked loss is not exact for this model type: full logits counted.")
    return Setup(
        shapes=shapes,
        adapters=adapters,
        device=device,
        ranks=ranks,
        weight_dtype=dtype,
        precision=precision,
        master_fp32=recipe.train.master_weights == "fp32",
        quantize=recipe.model.quantize,
        quant=quant.settings if quant else None,
        optimizer=recipe.optimizer.name,
        opt=recipe.selected("optimizer").settings if "optimizer" in recipe.backends else None,
        strategy=strategy,
        strat=recipe.selected("strategy").settings if "strategy" in recipe.backends else None,
        micro_batch=recipe.train.micro_batch_size,
        seq=recipe.model.max_seq_len,
        checkpointing=recipe.train.gradient_checkpointing,
        chunked=chunked,
        lean=bool(recipe.train.lean_activations)
        and not recipe.train.compile
        and shapes.config.get("model_type") in LEAN_TYPES
        and shapes.config.get("hidden_act", "silu") == "silu",
        notes=notes,
        grad_accum=recipe.train.grad_accum,
        gpus=gpus,
        file_dtype=str(shapes.config.get("torch_dtype") or shapes.config.get("dtype") or "float32"),
    )


LEAN_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # the gated MLPs tune.train.lean changes


def _chunk_exact(shapes: Shapes) -> bool:
    try:
        from tune.train.chunked_loss import EXACT_TYPES, POST_HEAD_KEYS
    except ImportError:  # pragma: no cover - a core without the chunked loss
        return False
    cfg = shapes.config
    return shapes.model_type in EXACT_TYPES and not any(cfg.get(k) for k in POST_HEAD_KEYS)


def peak_of(setup: Setup) -> tuple[float, str, list[Term], dict[str, float]]:
    all_terms = terms(setup)
    phases = phase_totals(all_terms)
    phase = max(phases, key=lambda k: phases[k])
    return phases[phase], phase, all_terms, phases


def estimate(recipe: Any, gpus: int | None = None, gpu_memory: float | None = None) -> Estimate:
    """The estimate for `recipe` (validated, backends selected) on `gpus` devices."""
    cfg = read_config(recipe)
    shapes = shapes_from_config(cfg, f"{recipe.path}: [model] path")
    found = [] if gpu_memory else local_gpus()
    device = "gpu" if gpu_memory or found else "cpu"
    ranks = gpus or (len(found) if found and recipe.strategy.name != "single" else 1)
    setup = build_setup(recipe, shapes, device, ranks)
    if gpu_memory:
        capacity, label = gpu_memory, f"--gpu-memory {gpu_memory / GiB:.1f} GiB"
    elif found:
        capacity, label = min(found), f"GPU memory {min(found) / GiB:.1f} GiB (nvidia-smi)"
    else:
        total = host_memory()
        capacity = total / setup.ranks
        label = f"host RAM {total / GiB:.1f} GiB" + (
            f" / {setup.ranks} ranks" if setup.ranks > 1 else ""
        )
    peak, phase, all_terms, phases = peak_of(setup)
    budget = capacity - OVERHEAD[device]
    result = Estimate(
        setup=setup,
        terms=all_terms,
        phases=phases,
        peak=peak,
        peak_phase=phase,
        host=host_bytes(all_terms),
        capacity=capacity,
        capacity_label=label,
        fits=peak <= budget,
    )
    result.max_micro_batch = _largest(setup, "micro_batch", budget, 4096)
    limit = int(shapes.config.get("max_position_embeddings") or 1 << 20)
    result.max_seq_len = _largest(setup, "seq", budget, limit)
    if not result.fits:
        result.advice = advise(setup, budget, recipe)
    return result


def _largest(setup: Setup, key: str, budget: float, limit: int) -> int:
    """The largest value of `key` (micro_batch or seq) whose peak fits `budget`; 0 if none."""

    def fits(value: int) -> bool:
        return peak_of(dataclasses.replace(setup, **{key: value}, notes=[]))[0] <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 1
    while hi < limit and fits(min(hi * 2, limit)):
        hi = min(hi * 2, limit)
        lo = hi
    if hi == limit and fits(limit):
        return limit
    hi = min(hi * 2, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def advise(setup: Setup, budget: float, recipe: Any) -> list[str]:
    """Single changes that make the recipe fit, cheapest in speed or quality first."""
    tries: list[tuple[str, dict[str, Any]]] = []
    if not setup.checkpointing:
        tries.append(("-o train.gradient_checkpointing=true", {"checkpointing": True}))
    if not setup.chunked and _chunk_exact(setup.shapes):
        tries.append(("-o train.chunked_loss=true", {"chunked": True}))
    if setup.optimizer == "adamw":
        tries.append(
            ("-o optimizer.name=adamw_8bit (tune-plugin-bitsandbytes)", {"optimizer": "adamw_8bit"})
        )
    if setup.precision == "fp32" and setup.device == "gpu":
        tries.append(
            (
                "-o train.precision=bf16 -o model.dtype=bfloat16",
                {"precision": "bf16", "weight_dtype": "bfloat16"},
            )
        )
    gpus = max(setup.ranks, setup.gpus)
    if gpus > 1 and setup.strategy in ("single", "ddp"):
        for label, name, strat in (
            ("-o strategy.name=fsdp (tune-plugin-fsdp)", "fsdp", _Strat(zero_stage=3)),
            (
                "-o strategy.name=deepspeed -o strategy.zero_stage=3",
                "deepspeed",
                _Strat(zero_stage=3),
            ),
        ):
            tries.append(
                (f"{label}, {gpus} ranks", {"strategy": name, "strat": strat, "ranks": gpus})
            )
    if (
        setup.strategy == "deepspeed"
        and getattr(setup.strat, "offload_optimizer", "none") == "none"
    ):
        z = int(getattr(setup.strat, "zero_stage", 2))
        tries.append(
            (
                "-o strategy.offload_optimizer=cpu",
                {
                    "strat": _Strat(
                        zero_stage=max(z, 1),
                        offload_optimizer="cpu",
                        low_memory_load=bool(getattr(setup.strat, "low_memory_load", True)),
                    )
                },
            )
        )
    if setup.quantize is None and setup.adapters:
        tries.append(("-o model.quantize=nf4 (QLoRA)", {"quantize": "nf4", "quant": None}))
    out = []
    for label, change in tries:
        peak = peak_of(dataclasses.replace(setup, **change, notes=[]))[0]
        if peak <= budget:
            out.append(f"{label}: peak {peak / GiB:.2f} GiB")
    if not setup.adapters and not setup.quantize:
        lora = Adapter("lora", _lora_all_linear(setup.shapes, 16), list(setup.shapes.linears), 16)
        lora.layers = setup.shapes.layers
        peak = peak_of(dataclasses.replace(setup, adapters=[lora], notes=[]))[0]
        if peak <= budget:
            out.append(
                f'[[adapt]] method = "lora", r = 16, targets = "all-linear": peak '
                f"{peak / GiB:.2f} GiB"
            )
    return out


def _lora_all_linear(shapes: Shapes, r: int) -> int:
    return r * shapes.layers * sum(i + o for i, o in shapes.linears.values())


@dataclass
class _Strat:
    """Strategy settings for a what-if (the real settings model may not be installed)."""

    zero_stage: int = 2
    offload_optimizer: str = "none"
    offload_params: str = "none"
    reduce_bucket_size: int | None = None
    low_memory_load: bool = True
