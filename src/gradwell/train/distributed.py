"""Data-parallel training on torch.distributed: gloo on CPUs, NCCL on GPUs, started by torchrun.

Every process holds the whole dataset and draws the same shuffled order (same seed); each global
batch of `batch_size` samples is cut into one equal shard per process, and DistributedDataParallel
averages the gradients, so N processes take the same steps as one process with the same global
batch (within float rounding). The last global batch of an epoch is dropped when it is shorter
than `batch_size`, so that every shard has the same size; `batch_size` must divide by the number of
processes. BatchNorm statistics are per process unless ``sync_batchnorm`` is on.

Every process keeps the same RNG state (same seed, same amount of randomness per step), so a
checkpoint written by process 0 resumes every process exactly. Only process 0 writes checkpoints,
metrics and plots and shows progress.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradwell.errors import ConfigError

log = logging.getLogger(__name__)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_environment() -> torch.device | None:
    """Join the process group torchrun describes in the environment; the device to train on.

    Returns None when not started by torchrun (no WORLD_SIZE, or 1).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        log.info(
            "joined the process group as rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend
        )
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    return device()


def device() -> torch.device:
    """This process's device: its local GPU under NCCL, the CPU under gloo."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def check_batch_size(batch_size: int) -> None:
    if batch_size % world_size():
        raise ConfigError(
            f"batch_size {batch_size} does not split into {world_size()} equal shards, one per "
            f"process; use a multiple of {world_size()}"
        )


def shard(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """This process's equal part of a global batch."""
    return x.tensor_split(world_size())[rank()], y.tensor_split(world_size())[rank()]


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model under DistributedDataParallel, which all-reduces (averages) gradients in backward."""
    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():
        # recent torch renames it forward_sync_buffers, which torch 2.4 does not know
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm compute training statistics over all processes' batches together."""
    from gradwell.norm import BatchNorm

    for module in model.modules():
        if isinstance(module, BatchNorm):
            module.sync = True
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def reduce_sums(tensors: Sequence[Tensor]) -> None:
    """Sum each tensor over all processes, in place (metrics at the end of an epoch)."""
    if active():
        for tensor in tensors:
            dist.all_reduce(tensor)


def first_step(step: Tensor) -> None:
    """The smallest non-negative value over processes, or -1 when none has one (in place)."""
    if active():
        big = torch.iinfo(torch.int64).max
        step.copy_(torch.where(step < 0, big, step))
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
        step.copy_(torch.where(step == big, -1, step))


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process; every process must call it (one small all-reduce)."""
    if not active():
        return flag
    found = torch.tensor(int(flag), device=device())
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return bool(found)


def gather(value: object) -> list[object]:
    """Every process's `value` (picklable, on the CPU), in process order; every process must call it."""
    if not active():
        return [value]
    values: list[object] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


# what gloo and NCCL say in a collective whose peer process has gone (killed, crashed)
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited")


def peer_lost(error: BaseException) -> bool:
    """Whether `error`, raised in a collective, means another process of the run has gone."""
    return active() and any(sign in str(error) for sign in PEER_LOST)


def first_text(text: str) -> str:
    """The first non-empty `text` in process order; every process must call it."""
    return next((t for t in gather(text) if t), "")


class StopVote:
    """Whether any process was asked to stop (Ctrl-C), decided at the same step on every process.

    Under torchrun each process gets its own SIGINT, at its own step. Stopping there would leave
    the others waiting in an all-reduce, so each step starts an asynchronous all-reduce (MAX) of
    the local flag on a CPU (gloo) group and reads the one started the step before: every process
    reads the same votes after the same number of steps, without waiting on the network per step,
    and a Ctrl-C takes effect one step later than alone. Every process must call it at every step.
    """

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo") if active() else None
        self.flag = torch.zeros(1, dtype=torch.int32)
        self.pending: dist.Work | None = None

    def __call__(self, local: bool) -> bool:
        if self.group is None:
            return local
        decided = False
        if self.pending is not None:
            self.pending.wait()
            decided = bool(self.flag)
        self.flag = torch.tensor([int(local)], dtype=torch.int32)
        self.pending = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return decided

    def close(self) -> None:
        """Wait for the last vote, so that no collective is left in flight."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value: object) -> object:
    """Process 0's `value` on every process (e.g. the run folder's name)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
