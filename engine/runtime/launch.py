"""Forming the distributed world: from a launcher's env (deepspeed, torchrun) or SLURM's, and local ranks.

    from engine.runtime.launch import init_distributed, run_local
    ctx = init_distributed(timeout_s=300)    # needs a launcher's env; fails loudly, never falls back to 1 rank
    run_local(fn, world_size=2, args=(...,))  # fn(rank, *args) on W local CPU ranks (tests, benches, notebooks)

Launch (one machine; on CPU add DS_ACCELERATOR=cpu, gloo is picked automatically):
    deepspeed --num_gpus 2 --module engine.train --config configs/tiny_cpu.yaml --deepspeed configs/deepspeed/zero3.json
    torchrun --standalone --nproc_per_node 2 -m engine.train --config ... --deepspeed configs/deepspeed/zero2.json
Many machines: a hostfile of `host slots=N` lines, the same code path and data on every host:
    deepspeed --hostfile hosts --master_addr host0 --module engine.train --config ... --deepspeed ...zero3.json
    (or torchrun --nnodes M --nproc_per_node N --rdzv_backend c10d --rdzv_endpoint host0:29500 -m engine.train ...)
SLURM: `srun python -m engine.train ...` (the world comes from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch

REQUIRED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 600  # torch's default; JEPA_DIST_TIMEOUT overrides (a checkpoint save must fit in it)


class LaunchError(RuntimeError):
    """The distributed world could not be formed as the launch promised."""


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device


def launched_by_launcher() -> bool:
    """True when a launcher (deepspeed, torchrun, run_local, or srun with several tasks) set our rank."""
    return "RANK" in os.environ or "LOCAL_RANK" in os.environ or _slurm_tasks() > 1


def _slurm_tasks() -> int:
    try:
        return int(os.environ.get("SLURM_NTASKS", "0")) if "SLURM_PROCID" in os.environ else 0
    except ValueError:
        return 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[07-09,12],cpu01" -> "gpu07"."""
    prefix, index = re.match(r"([^,\[]*)(?:\[([^,\]-]*))?", nodelist).groups()   # "gpu", "07"
    return prefix.strip() + (index or "")


def slurm_env() -> dict:
    """RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from srun's SLURM_* variables (those a
    launcher already set win). The master is the node list's first host; the port is MASTER_PORT, else
    one derived from the job id, so two jobs sharing a node do not collide."""
    if _slurm_tasks() < 1:
        return {}
    e = os.environ
    missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST") if k not in e]
    if missing:
        raise LaunchError(f"SLURM launch: {missing} are not set; start the job with `srun python -m engine.train ...`")
    job = int(e.get("SLURM_JOB_ID", "0") or 0)
    return {"RANK": e["SLURM_PROCID"], "WORLD_SIZE": e["SLURM_NTASKS"], "LOCAL_RANK": e["SLURM_LOCALID"],
            "MASTER_ADDR": first_host(e["SLURM_JOB_NODELIST"]), "MASTER_PORT": str(20000 + job % 20000)}


def _setup_accelerator() -> None:
    # Must run before DeepSpeed first asks for its accelerator (it reads DS_ACCELERATOR once).
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops
    if os.environ.get("DS_ACCELERATOR") == "cpu" and os.environ.get("JEPA_DS_SHM", "0") != "1":
        # The CPU accelerator JIT-builds a shm all-reduce op (~65 s on 2 cores) on first use; plain
        # gloo gives bit-identical results, so skip it unless asked (JEPA_DS_SHM=1).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(expected_world_size: int | None = None, timeout_s: float | None = None) -> DistContext:
    """Join the process group the launcher described, or raise LaunchError naming what is wrong.

    Never falls back to one process: missing env, a wrong world size, or a rank that never arrives
    within `timeout_s` (default $JEPA_DIST_TIMEOUT or 600 s) is an error. The same timeout bounds
    every later collective, so a peer that dies mid-run cannot hang the others forever.
    """
    timeout_s = float(timeout_s or os.environ.get("JEPA_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    for k, v in slurm_env().items():
        os.environ.setdefault(k, v)
    missing = [k for k in REQUIRED_ENV if k not in os.environ]
    if missing:
        raise LaunchError(f"distributed launch: environment variables {missing} are not set; start with "
                          "`deepspeed --num_gpus N --module engine.train ...` or `torchrun --nproc_per_node N ...`")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if expected_world_size is not None and world != expected_world_size:
        raise LaunchError(f"distributed launch: WORLD_SIZE={world} but {expected_world_size} ranks were expected")
    if not 0 <= rank < world:
        raise LaunchError(f"distributed launch: RANK={rank} is outside WORLD_SIZE={world}")
    _setup_accelerator()
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    backend = get_accelerator().communication_backend_name()
    if not dist.is_initialized():
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                                       timeout=timedelta(seconds=timeout_s))
            if backend == "gloo":
                # Names the ranks that did not reach the barrier (gloo only).
                dist.monitored_barrier(timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
            else:
                dist.barrier()
        except Exception as e:  # torch raises DistStoreError / RuntimeError / TimeoutError variously
            raise LaunchError(f"rank {rank}: the process group of {world} ranks at {where} did not form within "
                              f"{timeout_s:.0f} s (a rank never arrived, or the launch is wrong): "
                              f"{type(e).__name__}: {e}") from e
    elif dist.get_world_size() != world:
        raise LaunchError(f"process group has {dist.get_world_size()} ranks, WORLD_SIZE says {world}")
    if get_accelerator().device_name() == "cpu":
        device = torch.device("cpu")
    else:
        device = torch.device(get_accelerator().device_name(local))
        get_accelerator().set_device(local)
    return DistContext(rank, world, device)


def _run_local_entry(rank, world_size, port, fn, args, out_dir, threads):
    import traceback
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(threads)
    try:
        result = fn(rank, *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        close_distributed()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def close_distributed() -> None:
    """Leave the process group, if this process is in one (at the end of a command that joined it): its
    threads end before the interpreter's teardown, which can otherwise abort a rank that has done its work."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_local(fn, world_size: int = 2, args=(), timeout_s: float = 300, threads: int = 1) -> list:
    """Run fn(rank, *args) on `world_size` local processes set up as a launcher would (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT); returns each rank's (picklable) result. A rank that raises or dies
    fails the call with its error; past `timeout_s` all ranks are killed and TimeoutError is raised.
    fn must be importable (a module-level function): ranks are started with `spawn`.
    """
    import socket
    import tempfile
    import time
    import torch.multiprocessing as mp
    out_dir = tempfile.mkdtemp(prefix="ranks_")
    with socket.socket() as s:   # a free port for the ranks' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(_run_local_entry, args=(world_size, port, fn, args, out_dir, threads),
                             nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world_size} ranks did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
