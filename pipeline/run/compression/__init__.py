"""Gradient compression between data-parallel ranks: DDP communication hooks that send less
than the dense gradient (top-k with error feedback, PyTorch's PowerSGD), the bytes they send,
and the Lightning side that registers them, logs the bytes and checkpoints their state."""
