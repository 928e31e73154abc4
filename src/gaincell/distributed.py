"""The processes of one training job: which device this process uses, the process group, DDP or FSDP wrapping.

Written for ``torchrun``: it sets WORLD_SIZE, RANK and LOCAL_RANK in every process.  With WORLD_SIZE > 1,
:class:`Distributed` joins the process group and wraps the model for data parallelism (DDP: every rank holds the
whole model) or shards it (FSDP2: parameters, gradients and optimizer state split across ranks, for models that do
not fit one device).  With one process everything here is a no-op, so the same training code runs either way.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from gaincell.errors import GaincellError

__all__ = ["Distributed", "is_peer_failure", "resolve_device", "shard_blocks"]


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'; a CUDA request without a GPU is an error.

    Under ``torchrun`` 'auto' and 'cuda' mean this process's GPU, ``cuda:$LOCAL_RANK`` (made the current device)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GaincellError(f"device {name!r}: no CUDA GPU is available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise GaincellError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def shard_blocks(model: nn.Module, device: torch.device, world: int) -> None:
    """FSDP2 in place: ``fully_shard`` every transformer block, then the root (embeddings, final norm, head; tied
    weights stay together).  CPU-resident parameters move to ``device`` shard by shard, so the whole model never has
    to fit there."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard  # type: ignore[no-redef]
    from torch.distributed.device_mesh import init_device_mesh

    block_types = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_types]
    if not blocks:
        raise GaincellError(
            f"fsdp: cannot find the transformer blocks of {type(model).__name__} (it declares no _no_split_modules)"
        )
    mesh = init_device_mesh(device.type, (world,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


class Distributed:
    """This process's place in the job (``world`` processes, this one ``rank``), read from torchrun's environment.

    ``fsdp``: shard the model instead of replicating it (only meaningful with more than one process)."""

    def __init__(self, fsdp: bool = False) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        self.fsdp = fsdp and self.enabled  # sharding over one process is the unsharded model
        if self.enabled and not torch.distributed.is_initialized():
            # gloo for CPU tensors, NCCL for CUDA ones (a CPU run on a GPU machine still works)
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and reports."""
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around the model, or the model sharded in place (FSDP), when several processes train it."""
        if self.fsdp:
            shard_blocks(model, device, self.world)
            return model
        model.to(device)
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks."""
        return self.mean_and_any(value, False)[0]

    def mean_and_any(self, value: float, flag: bool) -> tuple[float, bool]:
        """The mean of ``value`` over ranks and whether any rank raised ``flag`` (one all-reduce)."""
        if not self.enabled:
            return value, flag
        t = torch.tensor([value, float(flag)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t[0]) / self.world, bool(t[1] > 0)

    def barrier(self) -> None:
        """Wait for every rank (no-op with one process)."""
        if self.enabled:
            torch.distributed.barrier()


# what gloo and NCCL say when the process at the other end of a collective has gone
_PEER_FAILURE_MESSAGES = ("closed by peer", "reset by peer", "Broken pipe", "communicator was aborted", "remote worker")


def is_peer_failure(exc: BaseException) -> bool:
    """Did a collective fail because another process of the job died (gloo / NCCL errors)?"""
    dist_error = getattr(torch.distributed, "DistError", ())
    return isinstance(exc, dist_error) or any(s in str(exc) for s in _PEER_FAILURE_MESSAGES)
