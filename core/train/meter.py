"""Honest numbers: throughput from real (non-pad) tokens, peak memory from the allocator or RSS."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any


class Meter:
    """Counts tokens and time; reports tokens/s and peak memory."""

    def __init__(self, device: str):
        self.device = device
        self.start = time.perf_counter()
        self.tokens = 0
        self.window_tokens = 0
        self.window_start = self.start

    def add(self, tokens: int) -> None:
        self.tokens += tokens
        self.window_tokens += tokens

    def window_rate(self) -> float:
        """Tokens/s since the last call (the rate shown in the progress bar)."""
        now = time.perf_counter()
        rate = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_tokens, self.window_start = 0, now
        return rate

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def peak_memory(self) -> dict[str, Any]:
        """CUDA max reserved (and % of the device) on a GPU, else the process's peak RSS."""
        if self.device.startswith("cuda"):
            import torch

            reserved = torch.cuda.max_memory_reserved(self.device)
            total = torch.cuda.get_device_properties(self.device).total_memory
            return {
                "kind": "cuda_max_reserved",
                "bytes": int(reserved),
                "percent_of_device": round(100.0 * reserved / total, 1),
            }
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_bytes = rss if sys.platform == "darwin" else rss * 1024
        return {"kind": "process_peak_rss", "bytes": int(rss_bytes)}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
