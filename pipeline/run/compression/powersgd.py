"""PyTorch's PowerSGD hook (low-rank gradients with error feedback), counting what it sends."""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

from pipeline.run.compression.traffic import Traffic


class PowerSGD:
    """PowerSGD's own state, and the bytes sent."""

    def __init__(self, rank: int, start_step: int, process_group=None):
        self.state = powersgd.PowerSGDState(
            process_group,
            matrix_approximation_rank=rank,
            start_powerSGD_iter=start_step,
            # Its statistics go to Python logging every N steps; ours are logged metrics.
            compression_stats_logging_frequency=2**31,
        )
        self.traffic = Traffic()

    def resume_at(self, step: int) -> None:
        """Continue a run from its `step`-th exchange. Error feedback and the warm start restart
        from zero, after one uncompressed step: DDP's first step after a restart uses other
        buckets than the rest, and PowerSGD's memories are kept by bucket."""
        self.state.iter = step
        self.state.start_powerSGD_iter = max(self.state.start_powerSGD_iter, step + 1)


def powersgd_hook(state: PowerSGD, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    psgd, buffer = state.state, bucket.buffer()
    compressing = psgd.iter >= psgd.start_powerSGD_iter
    before = psgd.total_numel_after_compression
    future = powersgd.powerSGD_hook(psgd, bucket)
    # Compressing, PowerSGD counts the P and Q factors and the tensors it sends as they are.
    sent = psgd.total_numel_after_compression - before if compressing else buffer.numel()
    state.traffic.add(sent * buffer.element_size(), buffer.numel() * buffer.element_size())
    if buffer.device.type == "cpu":
        # PowerSGD starts its second all-reduce from the first one's callback, which gloo runs
        # on its own thread: with several buckets in flight, ranks could start them in another
        # order and abort. One bucket at a time keeps the order.
        future.wait()
    return future
