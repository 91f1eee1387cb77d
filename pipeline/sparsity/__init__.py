"""Parameter sparsity (masks, methods, schedules) and the measurement of activation and gradient
sparsity. No maintained pruning library remains (see docs/sparsity.md), so the
masks are ours: plain boolean tensors beside the weights, never a reparametrisation, so state
dicts keep their keys."""
