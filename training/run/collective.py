"""What the ranks must agree on: with several resolution buckets, each rank fills full batches at its own pace, so
one rank may run out of batches while the others still have one; ZeRO's next gradient reduce would then wait for
it forever (until NCCL's timeout). Every micro-step the ranks agree whether all of them have a batch."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_ranks_have(has: bool, device: torch.device) -> bool:
    """True when every rank has a batch (a MIN all-reduce of one integer; a no-op alone)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return has
    flag = torch.tensor([int(has)], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
