"""Data parallelism over ``torch.distributed`` as the training loop sees it.

Every rank holds the whole adapter and runs the same optimizer steps. Each step's examples are
dealt out across ranks by length (so ranks get similar token counts), every rank scales its
summed token loss by the *global* count of loss tokens of the step, and the gradients are summed
with one flat all-reduce before clipping. The update is therefore that of a single process
training the same global batch, however the examples were split. This does what
``DistributedDataParallel`` does, but without its requirement that every rank run the same
number of backward passes: with token-budgeted micro-batches, ranks may need different counts.

Under FSDP (``sharded``, see ``worker.training.fsdp``) the model is split across ranks, every
forward and backward pass is a collective, and FSDP reduce-scatters the gradients itself. Ranks
must then run the same number of micro-batches: :meth:`DataParallel.even_out` pads a rank's
step with empty ones (no loss token, so no loss and no gradient) up to the most any rank has.

A single process uses :data:`SINGLE` (every operation is a no-op).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from worker.training.data import IGNORE_INDEX, Batch


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group (``world_size == 1``: no group).

    ``sharded``: the model is sharded with FSDP (gradients are reduced by FSDP, and every rank
    must run as many forward/backward passes as the others).
    """

    rank: int = 0
    world_size: int = 1
    sharded: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 reports, checkpoints and saves."""
        return self.rank == 0

    @classmethod
    def current(cls, sharded: bool = False) -> DataParallel:
        """The group set up by ``torch.distributed.init_process_group``, if any; ``sharded``
        asks for FSDP (which a single process never uses)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size(), sharded)
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
        """Sum the gradients of ``params`` over ranks with a single flat all-reduce (a no-op
        under FSDP, whose backward already reduced them)."""
        if self.world_size == 1 or self.sharded:
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

    def even_out(self, micro_batches: list[Batch], pad_token_id: int) -> list[Batch]:
        """Under FSDP, ``micro_batches`` padded with empty ones to the most any rank has.

        A collective under FSDP (every rank must call it for every step); else returned as is.
        """
        missing = self.missing_passes(len(micro_batches))
        return micro_batches + [empty_micro_batch(pad_token_id) for _ in range(missing)]

    def missing_passes(self, count: int) -> int:
        """Under FSDP, how many empty passes this rank must add to its ``count`` to run as
        many as the rank with the most; 0 otherwise. A collective under FSDP."""
        if not self.sharded:
            return 0
        import torch.distributed as dist

        most = torch.tensor([count], dtype=torch.long, device=self.comm_device())
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most.item()) - count

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


def empty_micro_batch(pad_token_id: int) -> Batch:
    """A two-token batch with no loss token: its forward and backward run every layer's
    collectives but add nothing to the loss, the gradients or the token counts."""
    return Batch(
        input_ids=torch.full((1, 2), pad_token_id, dtype=torch.long),
        attention_mask=torch.ones((1, 2), dtype=torch.long),
        labels=torch.full((1, 2), IGNORE_INDEX, dtype=torch.long),
        n_tokens=0,
        n_loss_tokens=0,
    )


SINGLE = DataParallel()
