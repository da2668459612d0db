"""Where a process sits in a multi-process run, and relaunching `tune run` under torchrun.

A run started by torchrun or the deepspeed launcher has RANK/WORLD_SIZE/LOCAL_RANK; one started
by srun has SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, which are mapped onto the former. Strategies
read the world from here; the loop never asks how the processes were started. Imports no torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where rank 0 of a relaunched run leaves its exit code for the relaunching process.
EXIT_FILE = "TUNE_EXIT_FILE"


@dataclass(frozen=True)
class EnvWorld:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def env_world() -> EnvWorld | None:
    """The world this process was started into, or None for a plain single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return EnvWorld(
            int(env["RANK"]),
            world,
            int(env.get("LOCAL_RANK", 0)),
            int(env.get("LOCAL_WORLD_SIZE", world)),
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        world = EnvWorld(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            int(env.get("SLURM_NTASKS_PER_NODE", env["SLURM_NTASKS"]).split("(")[0]),
        )
        # torch.distributed's env:// rendezvous reads these names.
        env.setdefault("RANK", str(world.rank))
        env.setdefault("WORLD_SIZE", str(world.world_size))
        env.setdefault("LOCAL_RANK", str(world.local_rank))
        env.setdefault("MASTER_ADDR", env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
        env.setdefault("MASTER_PORT", "29500")
        return world
    return None


def leave_rank(code: object) -> None:
    """End a rank of a multi-process run now: exit handlers run as in a normal exit, then the
    process leaves without finalizing the interpreter. Returns (nothing done) in a plain process.

    Why: on Python < 3.14 a library thread that wakes from a collective (gloo's, DeepSpeed's) and
    takes the GIL while the interpreter finalizes is ended by pthread_exit, which unwinds through a
    noexcept destructor: the process aborts ("terminate called without an active exception") once
    its work is done, and torchrun reports the job failed. Everything a run writes is closed
    before this point, so the finalization skipped has nothing left to do.
    """
    import atexit

    world = env_world()
    if world is None or world.world_size < 2 or "torch.distributed" not in sys.modules:
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, exit status 1, as the interpreter does
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def join_world(ctx, strategy: str) -> tuple[EnvWorld, str]:
    """For multi-process strategies: this process's world and device (cuda:LOCAL_RANK or cpu)."""
    from tune.errors import TuneError

    started = env_world()
    if started is None:
        raise TuneError(
            f"[strategy] name = '{strategy}' needs to be launched as one of several processes, "
            "but this one was started alone.",
            where=f"{ctx.recipe.path}: [strategy]",
            fix="run it with tune run --nproc-per-node N (or under torchrun, the deepspeed "
            "launcher or srun).",
        )
    import torch

    if torch.cuda.is_available():
        device = f"cuda:{started.local_rank}"
        torch.cuda.set_device(device)
        return started, device
    return started, "cpu"


def start_process_group(ctx, strategy: str, backend: str = "auto", timeout_s: float = 1800):
    """`join_world`, then torch.distributed's default process group (nccl on CUDA, gloo on CPU
    unless `backend` names one): the set-up every plain multi-process strategy shares."""
    import datetime

    import torch.distributed as dist
    from tune.contract.context import World

    started, device = join_world(ctx, strategy)
    if backend == "auto":
        backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(started.rank, started.world_size, started.local_rank, device)


def relaunch(
    tune_args: list[str],
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> int:
    """Run `python -m tune <tune_args>` in N processes under torch.distributed.run; return its code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and master_addr is None:
        cmd.append("--standalone")  # a free port on localhost, no rendezvous server needed
    else:
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}"]
        cmd += [
            f"--master-addr={master_addr or '127.0.0.1'}",
            f"--master-port={master_port or 29500}",
        ]
    cmd += ["-m", "tune", *tune_args]
    import tempfile

    exit_file = Path(tempfile.mkstemp(prefix="tune-exit-")[1])
    proc = subprocess.Popen(cmd, env={**os.environ, EXIT_FILE: str(exit_file)})
    got: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        """SIGTERM / Ctrl-C go to torchrun, which passes them on: the ranks checkpoint and
        stop together (see tune.train.signals); this process waits for them."""
        got.append(signum)
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    said = exit_file.read_text().strip() if exit_file.exists() else ""
    exit_file.unlink(missing_ok=True)
    if said.isdigit() and code != 0:  # the ranks' own code (2: a mistake, 3: stopped)
        return int(said)
    if got and code != 0:  # torchrun reports the signal; the ranks said what they saved
        from tune.train.signals import EXIT_STOPPED

        return EXIT_STOPPED
    return code


def check_sequence_parallel(recipe: Any, size: int) -> None:
    """For a strategy's `tune_check_recipe`: refuse `[strategy] sequence_parallel = size` where
    it cannot run (an adapter that extends positions; fewer key/value heads than ranks, a short
    sliding window, a router loss, in a model whose config is known without loading). Imports
    no torch."""
    from tune.train.sequence_parallel import check_recipe

    check_recipe(recipe, size)


def sequence_sum(x: Any) -> Any:
    """A per-sequence sum of per-token values (`x`) summed over the sequence-parallel group
    while a sliced micro-batch runs, else `x` as it is: an objective that sums token
    log-probabilities per sequence calls it so every rank sees the whole sequence's sum.
    Differentiable for floating tensors."""
    from tune.train.sequence_parallel import sequence_sum as group_sum

    return group_sum(x)
