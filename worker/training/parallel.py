"""Data parallelism over ``torch.distributed`` as the training loop sees it.

Every rank holds the whole adapter and runs the same optimizer steps. Each step's examples are
dealt out across ranks by length (so ranks get similar token counts), every rank scales its
summed token loss by the *global* count of loss tokens of the step, and the gradients are summed
with one flat all-reduce before clipping. The update is therefore that of a single process
training the same global batch, however the examples were split. This does what
``DistributedDataParallel`` does, but without its requirement that every rank run the same
number of backward passes: with token-budgeted micro-batches, ranks may need different counts.

A single process uses :data:`SINGLE` (every operation is a no-op).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group (``world_size == 1``: no group)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 reports, checkpoints and saves."""
        return self.rank == 0

    @classmethod
    def current(cls) -> DataParallel:
        """The group set up by ``torch.distributed.init_process_group``, if any."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return SINGLE

    def shard(self, indices: Sequence[int], lengths: Sequence[int]) -> list[int]:
        """This rank's share of a step's examples: every ``world_size``-th by length."""
        if self.world_size == 1:
            return list(indices)
        ordered = sorted(indices, key=lambda i: lengths[i])
        return ordered[self.rank :: self.world_size]

    def sum_(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values`` over ranks (in place; returned for convenience)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks with a single flat all-reduce."""
        if self.world_size == 1:
            return
        grads = []
        for p in params:
            if p.grad is None:  # a rank that got no example in this step
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        self.sum_(flat)
        offset = 0
        for grad in grads:
            n = grad.numel()
            grad.copy_(flat[offset : offset + n].view_as(grad))
            offset += n

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (cancel and pause must stop all ranks together)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.long, device=self.comm_device())
        dist.broadcast(t, src=0)
        return bool(t.item())

    def comm_device(self) -> torch.device:
        """Where collective tensors must live: the rank's GPU under NCCL, else the CPU."""
        import torch.distributed as dist

        if self.world_size > 1 and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        """Wait for every rank (e.g. while rank 0 writes a checkpoint)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


SINGLE = DataParallel()
