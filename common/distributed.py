"""One process or several (`torchrun` / `accelerate launch`): the few collective operations the trainer needs.

Under a multi-process launcher (environment WORLD_SIZE > 1) this wraps `accelerate.Accelerator`: the model
and optimizer are prepared by accelerate (DDP, or FSDP per `accelerate config`; on CPU, DDP over gloo), each
process computes the gradients of its share of a batch, and the gradient all-reduce happens on the last
backward of the step (the others run under `no_sync`). In a single process everything is a no-op, so the
trainer has one code path. Only the main process (rank 0) writes files.

    group = ProcessGroup(ctx.device)
    model, optimizer = group.prepare(model, optimizer)
    with group.sync_context(model, sync=is_last_backward):
        loss.backward()
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
from torch import Tensor


def resolve_device(requested: str, assigned_gpu: int | None = None) -> torch.device:
    """'auto' -> cuda:`assigned_gpu` (cuda:0 when None) if CUDA is available, else CPU; anything else as given."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{assigned_gpu if assigned_gpu is not None else 0}")
    return torch.device("cpu")


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (environment RANK), or the only process (RANK unset)."""
    return int(os.environ.get("RANK", "0")) == 0


def launched_distributed() -> bool:
    """True when started by a multi-process launcher (torchrun / accelerate launch set WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class ProcessGroup:
    """Rank bookkeeping and collectives; trivial in a single process.

    Args:
        device: The device the runner assigned. Under a launcher, CPU stays CPU (gloo) and a GPU device is
            replaced by the process's own GPU (accelerate picks it from LOCAL_RANK).
    """

    def __init__(self, device: torch.device):
        self.accelerator = None
        self.device = device
        if launched_distributed():
            from accelerate import Accelerator  # imported only when needed

            self.accelerator = Accelerator(cpu=device.type == "cpu")
            self.device = self.accelerator.device

    @property
    def world_size(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """(model, optimizer) wrapped for multi-process training; unchanged in a single process."""
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def sync_context(self, model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Context for one backward: with `sync=False` gradients stay local (accumulated), with True the
        backward also all-reduces (averages) them across processes."""
        if self.accelerator is None or sync:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def backward(self, loss: Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def sum(self, tensor: Tensor) -> Tensor:
        """Element-wise sum over processes (a copy; the input is left alone)."""
        if self.accelerator is None:
            return tensor.clone()
        return self.accelerator.reduce(tensor.clone().to(self.device), reduction="sum").cpu()

    def gather_objects(self, items: list[Any]) -> list[Any]:
        """Concatenation of every process's `items`, in rank order (the same list on every process)."""
        if self.accelerator is None:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(items)

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model without the DDP/FSDP wrapper."""
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, Tensor] | None:
        """The full state dict for saving (gathered under FSDP); None in a single process (use the model's)."""
        return None if self.accelerator is None else self.accelerator.get_state_dict(model)

    def shard(self, count: int) -> list[int]:
        """This process's positions among `count` items: rank, rank + W, rank + 2W, ..."""
        return list(range(self.rank, count, self.world_size))

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on the main process first, then on the others (e.g. fill a cache, then read it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()
