"""`tune estimate`: per-device training memory from the recipe and the model config alone.

`estimate(recipe, gpus=..., gpu_memory=...)` resolves what the recipe decides for the target
device (a GPU when --gpu-memory is given or one is present, else this machine's host RAM),
builds the memory terms (`tune.estimate.memory`), takes the largest phase as the peak, and says
whether it fits, what to change if not, and the largest micro-batch and sequence length that
fit. Every backend-specific term comes from the recipe's backends (`tune.estimate.contrib`).
Imports no torch (except for a config.json that lacks keys, through transformers).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.contract.memory import MemoryTerm as Term
from tune.errors import TuneError
from tune.estimate.advice import advise
from tune.estimate.memory import host_bytes, peak_of
from tune.estimate.setup import Setup, build_setup
from tune.estimate.shapes import read_config, shapes_from_config

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
        from tune.estimate.memory import trained_plan

        s, shapes = self.setup, self.setup.shapes
        return {
            "parameters": {
                "total": shapes.total_params(),
                "active_per_token": shapes.active_params(),  # a MoE model's picked experts
                "beside_decoder": shapes.extra_params,  # e.g. a frozen vision tower
                "trainable": trained_plan(s).trainable,
            },
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


def model_shapes(recipe: Any) -> Any:
    """The model's shapes: from its loader's `estimate=` where it declares one (a model whose
    config.json is not a decoder's, e.g. a vision-language model), else from config.json."""
    where = f"{recipe.path}: [model] path"
    loader = recipe.backends.get("loader")
    fn = getattr(getattr(loader, "backend", None), "estimate", None)
    given = fn(loader.settings, recipe) if fn is not None else None
    if given is None:
        return shapes_from_config(read_config(recipe), where)
    shapes = shapes_from_config(given.config, where)
    shapes.extra_params, shapes.extra_label = given.extra_params, given.extra_label
    return shapes


def estimate(
    recipe: Any, gpus: int | None = None, gpu_memory: float | None = None, plugins: Any = None
) -> Estimate:
    """The estimate for `recipe` (validated, backends selected) on `gpus` devices.

    `plugins` (the plugin manager the recipe was loaded with) lets the advice try the installed
    backends of each kind; without it the advice changes only core keys and the recipe's own
    strategy settings.
    """
    shapes = model_shapes(recipe)
    found = [] if gpu_memory else local_gpus()
    device = "gpu" if gpu_memory or found else "cpu"
    one = recipe.selected("strategy").capabilities.processes == "one"
    ranks = gpus or (len(found) if found and not one else 1)
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
    setup.notes[:] = list(dict.fromkeys(setup.notes))
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
    limit = _positions(recipe, shapes.config)
    result.max_seq_len = _largest(setup, "seq", budget, limit)
    if not result.fits:
        result.advice = advise(setup, budget, plugins)
    return result


def _positions(recipe: Any, config: dict[str, Any]) -> int:
    """The longest sequence the model reaches: its positions, times a `[model] rope_scaling`
    factor (which is what lets a long-context recipe go past them)."""
    positions = int(config.get("max_position_embeddings") or 1 << 20)
    scaling = getattr(recipe.model, "rope_scaling", None) or {}
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    if isinstance(factor, int | float) and factor > 1:
        original = scaling.get("original_max_position_embeddings") or positions
        positions = max(positions, int(original * factor))
    return max(positions, int(recipe.model.max_seq_len))


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
