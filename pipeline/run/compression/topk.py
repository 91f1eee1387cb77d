"""Top-k gradient sparsification with error feedback, as a DDP communication hook.

Each rank sends, for every parameter in a bucket, only the largest `ratio` of its gradient's
entries (by magnitude) as values and indices; what it did not send stays behind as that
parameter's residual and is added to its next gradient, so no part of a gradient is lost,
only delayed. The ranks all-gather each other's values and indices and every rank sums them
into the same dense bucket, in rank order, so replicas stay identical.

The choice is made per parameter, not over the whole bucket: DDP rebuilds its buckets after
the first step (and again in a resumed run), and a choice that depended on the bucket layout
would make a resumed run pick other entries than an uninterrupted one. Residuals are kept by
parameter name for the same reason, which also makes them checkpointable.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.

import math

import torch
import torch.distributed as dist
from torch import nn

from pipeline.run.compression.traffic import Traffic

INDEX = torch.int32  # 4 bytes an index: a bucket never holds 2**31 entries


class TopK:
    """The hook's state: the ratio, every rank's own residuals by parameter name, the bytes
    sent."""

    def __init__(self, ratio: float, model: nn.Module, process_group=None):
        self.ratio = ratio
        self.params = dict(model.named_parameters())
        self.names = {id(p): name for name, p in self.params.items()}
        self.residuals: dict[str, torch.Tensor] = {}
        self.traffic = Traffic()
        self.process_group = process_group

    def kept(self, size: int) -> int:
        return max(1, math.ceil(self.ratio * size))


def topk_hook(state: TopK, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    names = [state.names[id(p)] for p in bucket.parameters()]
    sizes = [p.numel() for p in bucket.parameters()]
    # The bucket is the parameters' gradients end to end, in bucket.parameters() order.
    assert sum(sizes) == buffer.numel() < 2**31
    corrected = buffer.clone()
    chosen, start = [], 0
    for name, size in zip(names, sizes, strict=True):
        segment = corrected[start : start + size]
        if name in state.residuals:
            segment.add_(state.residuals[name].view(-1))
        chosen.append(segment.abs().topk(state.kept(size), sorted=False).indices + start)
        start += size
    index = torch.cat(chosen)
    values = corrected[index]
    corrected[index] = 0  # now the residual: what this rank did not send
    start = 0
    for name, size in zip(names, sizes, strict=True):
        state.residuals[name] = corrected[start : start + size].view(state.params[name].shape)
        start += size

    sent_index = index.to(INDEX)
    payload = torch.cat([sent_index.view(torch.uint8), values.view(torch.uint8)])
    state.traffic.add(payload.numel(), buffer.numel() * buffer.element_size())
    group = state.process_group
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(payload) for _ in range(world)]
    work = dist.all_gather(gathered, payload, group=group, async_op=True)
    split = sent_index.numel() * sent_index.element_size()

    def combine(_: torch.futures.Future) -> torch.Tensor:
        dense = torch.zeros_like(buffer)
        for part in gathered:  # in rank order on every rank: the same sums everywhere
            where = part[:split].view(INDEX).long()
            # A copy: the values' bytes need not start at a multiple of their size.
            dense[where] += part[split:].clone().view(buffer.dtype)
        return dense.div_(world)

    return work.get_future().then(combine)
