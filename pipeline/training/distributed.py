"""Data-parallel training across processes: the process group, its ranks, and the launcher.

``cloudpose train --nproc-per-node K`` re-launches itself through ``torch.distributed.run``
(``torchrun``), which starts K processes and gives each its rank in environment variables.
Each process joins the group from those variables (NCCL on CUDA GPUs, gloo on the CPU) and
trains a :class:`~torch.nn.parallel.DistributedDataParallel` copy of the model on its own
batches; gradients are averaged over the ranks, so a step sees K × ``batch_size`` clouds.
Rank 0 alone validates and writes the run folder; the others follow its decisions.

A process started without torchrun's variables is a group of one, and nothing here costs it
anything.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

from pipeline.training.config import ConfigError

Value = TypeVar("Value")
DEFAULT_MASTER_PORT = 29500


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or anything that sets its variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_from_environment() -> int:
    """This process's global rank as torchrun set it; 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the training group.

    Attributes:
        rank: global rank, 0 to ``world_size - 1``; rank 0 writes the run folder.
        local_rank: rank on this node; picks the GPU.
        world_size: processes in the group (1: a plain single-process run).
        backend: ``nccl``, ``gloo``, or empty for a single process.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return bool(self.backend)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: Value) -> Value:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_equal(self, value: Any) -> bool:
        """Whether every rank holds the same ``value``; the same answer on every rank."""
        if not self.distributed:
            return True
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return all(other == values[0] for other in values)

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it may write files); the others run it after it is done."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes, or stay a group of one.

    Args:
        device: the device the run asked for (``cpu`` or ``cuda``).

    Returns:
        This process's ranks and its device: on CUDA, the GPU of its local rank.
    """
    if not (launched_by_torchrun() or (dist.is_available() and dist.is_initialized())):
        return Ranks(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        # init_method env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE.
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, **kwargs)
    ranks = Ranks(dist.get_rank(), local_rank, dist.get_world_size(), dist.get_backend())
    return ranks, device


def check_launch(
    device: torch.device, nproc_per_node: int, nnodes: int, node_rank: int, master_addr: str | None
) -> None:
    """Refuse a launch that cannot start: raise one ConfigError naming every problem."""
    problems = []
    if device.type == "cuda" and nproc_per_node > torch.cuda.device_count():
        problems.append(
            f"--nproc-per-node {nproc_per_node} needs as many GPUs, this node has "
            f"{torch.cuda.device_count()} (pass fewer, or --device cpu)"
        )
    if nnodes > 1 and not master_addr:
        problems.append(f"--nnodes {nnodes} needs --master-addr, the address of node 0")
    if not 0 <= node_rank < nnodes:
        problems.append(f"--node-rank must be 0 to {nnodes - 1}, got {node_rank}")
    if problems:
        raise ConfigError("cannot launch: " + "; ".join(problems))


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_now(status: int = 0) -> NoReturn:
    """End a process of a run of several, once it has left the group: flush, then ``os._exit``.

    Once DDP has used it, the gloo group's native threads outlive ``destroy_process_group``
    (torch 2.13: a reference taken while DDP is set up keeps the group, and neither its
    ``shutdown`` nor ``abort`` stops them). An interpreter that then exits normally tears the
    runtime down under those running threads, and under load that aborts the process, a rank
    whose run went well, with "terminate called without an active exception" (about one exit in
    ten with the CPU shared, none with ``os._exit``). By the time this is called the run folder
    is complete (training ends on a barrier) and nothing is left to finalize but output.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def one_of_several_ranks() -> bool:
    """Whether this process is a rank of a torchrun group of more than one process."""
    return launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1


@contextmanager
def ends_rank_process() -> Iterator[None]:
    """In a rank of a group of several, end the process through :func:`exit_now` however the block
    ends, with the status the command would have exited with; elsewhere, do nothing.

    A rank's run that went well ends here, and so does one that failed: a raised exit
    (``typer.Exit``, ``SystemExit``) keeps its status, Ctrl-C or torchrun's SIGTERM ends with
    "Aborted!" and 1 (as the command line's), any other error prints its traceback and ends
    with 1. Without this, the interpreter of a failing rank would finalize under gloo's threads
    and could die on an abort instead of its own status.
    """
    if not one_of_several_ranks():
        yield
        return
    status = 0
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write("Aborted!\n")
        status = 1
    except BaseException as error:  # every way out of a rank ends in exit_now
        code = getattr(error, "exit_code", getattr(error, "code", None))
        if isinstance(code, int):
            status = code
        elif isinstance(error, SystemExit):
            if code is not None:
                sys.stderr.write(f"{code}\n")
            status = 0 if code is None else 1
        else:
            traceback.print_exc()
            status = 1
    cleanup()
    exit_now(status)


def torchrun_command(
    arguments: list[str],
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
) -> list[str]:
    """The command that runs ``python -m pipeline.cli ARGUMENTS`` on ``nproc_per_node`` processes.

    One node without a master address uses torchrun's ``--standalone`` rendezvous (a free
    local port, so several runs can share a machine); otherwise every node runs the same command
    with its own ``node_rank`` and the address and port of node 0.
    """
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and master_addr is None:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            f"--master-addr={master_addr}",
            f"--master-port={master_port}",
        ]
    return [*command, "-m", "pipeline.cli", *arguments]
