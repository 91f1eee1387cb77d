"""2:4 weights on NVIDIA's sparse tensor cores, through torch.sparse.to_sparse_semi_structured.

Only inference gains: the conversion happens after training, on a copy in half precision.
Unstructured sparsity saves no time with dense kernels, and 2:4 saves time only here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.sparsity.targets import linear_layers


def check_semi_structured() -> None:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        found = (
            f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))}"
            if torch.cuda.is_available()
            else "no CUDA device"
        )
        raise UserError(
            "sparsity.accelerate=true runs 2:4 weights on sparse tensor cores, which need a "
            f"CUDA GPU of compute capability >= 8.0 (Ampere or newer); this machine has {found}. "
            "Set sparsity.accelerate=false: the 2:4 model still trains and exports, as dense "
            "tensors with zeros."
        )


def accelerated(model: nn.Module, layers: list[str], dtype: torch.dtype = torch.float16):
    """A copy on the GPU in `dtype` whose targeted Linear weights are semi-structured sparse
    tensors (every 4 consecutive inputs of a row must hold at most 2 non-zeros)."""
    from torch.sparse import to_sparse_semi_structured

    check_semi_structured()
    fast = copy.deepcopy(model).to("cuda", dtype).eval()
    modules = linear_layers(fast)
    for layer in layers:
        module = modules[layer]
        module.weight = nn.Parameter(
            to_sparse_semi_structured(module.weight.detach()), requires_grad=False
        )
    return fast
