"""Host memory: the glibc allocator settings a training process starts with.

Why: PyTorch allocates every CPU tensor with `posix_memalign(64)`. glibc serves an aligned
request from a block of size + 64 + 32 bytes and gives the unused head and tail back; the small
freed heads sit in the per-thread cache (tcache) and the fastbins, which never coalesce with
their neighbours. So a freed activation leaves a hole that the next tensor of the same size
does not fit, and during a forward pass the heap grows by up to twice what is alive (glibc
2.36: a small LoRA Llama ends four steps with 1.5-2.0x its peak of live blocks in heap; the
SmolLM2-shaped bench's peak RSS 4.5 GiB for 1.9 GiB of live tensors). With the tcache and
fastbins off, freed blocks coalesce again: 0.8-1.0x, and the bench's peak falls to 3.5 GiB at
the same speed (bench/results/vs-trainer-2026-12-04.md).

glibc reads these settings (GLIBC_TUNABLES) only when a process starts, so `tune run`
re-executes itself once with them: the same process id, interpreter and arguments, before
anything is imported or validated. Only where no GPU is visible (no NVIDIA or ROCm device
node): there the host heap holds the activations, while on a GPU they live in the CUDA caching
allocator and a slower small-object malloc would only cost launch overhead (not measured yet).
`TUNE_HOST_MALLOC=tuned` applies them anyway (CPU offload on a GPU machine), `=system` never;
a `glibc.malloc.*` tunable the user set already wins. Nothing changes off glibc (macOS, musl,
Windows). Imports no torch.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0"
OPT_OUT = "TUNE_HOST_MALLOC"
GPU_NODES = ("/dev/nvidiactl", "/dev/kfd")  # NVIDIA's driver, ROCm's


def _is_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _gpu_visible() -> bool:
    return any(os.path.exists(node) for node in GPU_NODES)


def _choice(env: Mapping[str, str]) -> str:
    """The user's TUNE_HOST_MALLOC: "system", "tuned" or "" (tune decides)."""
    return env.get(OPT_OUT, "").strip().lower()


def tuned_environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The environment to start a training process with, or None where nothing should change:
    off glibc, opted out, a GPU visible (unless asked for), or the user's own malloc tunables
    already set."""
    env = dict(os.environ if environ is None else environ)
    choice = _choice(env)
    if not _is_glibc() or choice == "system" or (choice != "tuned" and _gpu_visible()):
        return None
    current = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in current:
        return None
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLES}" if current else TUNABLES
    return env


def restart_with_tuned_malloc() -> None:
    """Re-execute this command line with the tuned allocator, once; returns where it would not
    change anything (or where the command line cannot be re-run, e.g. a script from stdin)."""
    env = tuned_environment()
    argv = list(getattr(sys, "orig_argv", ()))
    if env is None or not sys.executable or len(argv) < 2 or "-" in argv[1:2]:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # could not start again: run on with glibc's defaults (the run says so)
        return


def describe(environ: Mapping[str, str] | None = None) -> str:
    """One line for the run's output: which allocator settings this process runs with."""
    env = os.environ if environ is None else environ
    if not _is_glibc():
        return "the platform's own allocator (not glibc)"
    current = env.get("GLIBC_TUNABLES", "")
    if TUNABLES in current:
        return f"glibc with tcache and fastbins off ({OPT_OUT}=system for glibc's defaults)"
    if "glibc.malloc." in current:
        return f"glibc with your GLIBC_TUNABLES ({current})"
    if _gpu_visible() and _choice(env) != "system":
        return f"glibc defaults (a GPU is visible; {OPT_OUT}=tuned for the host-heap settings)"
    return "glibc defaults (freed activations fragment the heap; see tune.machine.hostmem)"
