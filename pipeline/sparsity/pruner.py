"""Masks over a model's targeted weights: computing them, holding them through optimizer steps,
and reporting them. Lightning-free; `callback.py` calls it at the right moments."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config.sparsity import SparsityConfig
from pipeline.errors import UserError
from pipeline.sparsity.masks import drop_and_grow, keep_in_groups, select
from pipeline.sparsity.targets import linear_layers, parameters


class Pruner:
    def __init__(self, cfg: SparsityConfig, model: nn.Module, layers: list[str]):
        self.cfg = cfg
        self.model = model
        self.layers = layers
        # Looked up once: moving the model to a device keeps its Parameter objects.
        self.params = parameters(model)
        self.weights = {f"{layer}.weight": self.params[f"{layer}.weight"] for layer in layers}
        # parameter name -> keep mask (True: the entry is kept), on its parameter's device
        self.masks: dict[str, torch.Tensor] = {}
        if cfg.pattern == "structured":
            self.units = self._unit_groups()

    def load(self, masks: dict[str, torch.Tensor]) -> None:
        """Take masks computed elsewhere (a checkpoint, rank 0), placed beside their
        parameters once rather than copied at every step."""
        self.masks = {name: keep.to(self.params[name].device) for name, keep in masks.items()}

    def _scores(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """|W| (times the input norms for wanda), -inf where already pruned."""
        scores = {}
        for name, w in weights.items():
            score = w.detach().abs().float()
            if name in self.masks:
                score = score.masked_fill(~self.masks[name], -torch.inf)
            scores[name] = score
        return scores

    @torch.no_grad()
    def prune_to(self, sparsity: float, input_norms: dict[str, torch.Tensor] | None = None) -> None:
        """Masks at `sparsity` (N:M patterns: theirs), never re-admitting a pruned entry."""
        cfg = self.cfg
        if cfg.pattern == "structured":
            self.masks.update(self._structured(sparsity))
            self.apply()
            return
        scores = self._scores(self.weights)
        if input_norms is not None:
            for name, score in scores.items():
                score.mul_(input_norms[name.removesuffix(".weight")].to(score.device))
        if cfg.nm is not None:
            n, m = cfg.nm
            for name, w in self.weights.items():
                if w.shape[-1] % m:
                    raise UserError(
                        f"sparsity.pattern={cfg.pattern}: {name} has {w.shape[-1]} inputs, not "
                        f"a multiple of {m}. Exclude it with sparsity.target_modules."
                    )
            masks = {name: keep_in_groups(s, m, m - n) for name, s in scores.items()}
        elif input_norms is not None:
            # Wanda compares weights within each output row.
            masks = {
                name: keep_in_groups(s, s.shape[-1], math.floor(sparsity * s.shape[-1]))
                for name, s in scores.items()
            }
        else:
            masks = select(scores, sparsity, cfg.scope, cfg.max_layer_sparsity)
        self.masks.update(masks)
        self.apply()

    def _unit_groups(self) -> dict[str, list[tuple[str, int, int]]]:
        """Structured units: every group's (parameter, dimension, entries per unit). A FFN
        neuron is a row of fc1 (and its bias) and a column of fc2; a head is head_dim rows of
        each of W_query/W_key/W_value (and biases) and head_dim columns of out_proj."""
        suffixes = {"ffn_neurons": (".ff.fc1", ".ff.fc2"), "heads": (".att.W_query",)}
        first = suffixes[self.cfg.structure][0]
        groups: dict[str, list[tuple[str, int, int]]] = {}
        for layer in self.layers:
            if not layer.endswith(first):
                continue
            parent = layer.removesuffix(first.rpartition(".")[2]).rstrip(".")
            if self.cfg.structure == "ffn_neurons":
                inputs, outputs, size = ["fc1"], ["fc2"], 1
            else:
                inputs, outputs = ["W_query", "W_key", "W_value"], ["out_proj"]
                size = self.params[f"{layer}.weight"].shape[0] // self._n_heads()
            members = []
            for sub in inputs:
                members.append((f"{parent}.{sub}.weight", 0, size))
                if f"{parent}.{sub}.bias" in self.params:
                    members.append((f"{parent}.{sub}.bias", 0, size))
            members += [(f"{parent}.{sub}.weight", 1, size) for sub in outputs]
            weights = [n for n, _, _ in members if n.endswith(".weight")]
            if missing := [n for n in weights if n.removesuffix(".weight") not in self.layers]:
                raise UserError(
                    f"sparsity.structure={self.cfg.structure} prunes whole units across "
                    f"{parent}, but sparsity.target_modules leaves out {missing[0]}. Target all "
                    "of a block's feed-forward (fc1, fc2) or attention projections."
                )
            groups[parent] = members
        if not groups:
            raise UserError(
                f"sparsity.pattern=structured (structure={self.cfg.structure}) found no "
                f"{first.lstrip('.')} among the targeted layers: structured pruning needs our "
                "GPT's blocks (model.arch=gpt) and target_modules that include them."
            )
        return groups

    def _n_heads(self) -> int:
        return next(m.n_heads for m in self.model.modules() if hasattr(m, "n_heads"))

    def _unit_view(self, name: str, dim: int, size: int) -> torch.Tensor:
        """The parameter (or its mask) as [units, entries of one unit]."""
        tensor = self.params[name]
        return tensor.movedim(dim, 0).reshape(tensor.shape[dim] // size, -1)

    def _structured(self, sparsity: float) -> dict[str, torch.Tensor]:
        scores = {}
        for group, members in self.units.items():
            score = sum(self._unit_view(*m).detach().float().pow(2).sum(1) for m in members)
            name, dim, size = members[0]
            if name in self.masks:
                pruned = ~self.masks[name].movedim(dim, 0).reshape(score.shape[0], -1).any(1)
                score = score.masked_fill(pruned, -torch.inf)
            scores[group] = score
        kept_units = select(scores, sparsity, self.cfg.scope, self.cfg.max_layer_sparsity)
        masks = {}
        for group, members in self.units.items():
            for name, dim, size in members:
                shape = self.params[name].shape
                keep = kept_units[group].repeat_interleave(size)
                view = [1] * len(shape)
                view[dim] = shape[dim]
                masks[name] = keep.view(view).expand(shape).clone()
        return masks

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the masked weights, and their optimizer moments (or momentum would bring them
        back)."""
        for name, keep in self.masks.items():
            param = self.params[name]
            param.mul_(keep)
            if optimizer is None:
                continue
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(keep)

    @torch.no_grad()
    def mask_grads(self) -> None:
        for name, keep in self.masks.items():
            grad = self.params[name].grad
            if grad is not None:
                grad.mul_(keep)

    def dense_grads(self) -> dict[str, torch.Tensor]:
        return {
            name: w.grad.detach().clone() for name, w in self.weights.items() if w.grad is not None
        }

    @torch.no_grad()
    def regrow(self, fraction: float, grads: dict[str, torch.Tensor]) -> None:
        """RigL's update; grown weights start at zero (apply() zeroes their moments)."""
        for name, w in self.weights.items():
            if name not in grads:
                continue
            new = drop_and_grow(w, self.masks[name], grads[name], fraction)
            w.mul_(new & self.masks[name])
            self.masks[name] = new

    def penalty(self) -> torch.Tensor:
        """lambda * sum |W| over the targeted weights that train."""
        trained = [w for w in self.weights.values() if w.requires_grad]
        return self.cfg.l1_lambda * sum(w.abs().sum() for w in trained)

    def report(self) -> dict[str, float]:
        """Sparsity per targeted layer (masked entries of its weight) and in total."""
        per_layer, zeros, total = {}, 0, 0
        for name, w in self.weights.items():
            keep = self.masks.get(name)
            pruned = int((~keep).sum()) if keep is not None else int((w == 0).sum())
            per_layer[name.removesuffix(".weight")] = pruned / w.numel()
            zeros, total = zeros + pruned, total + w.numel()
        return {"total": zeros / total, **per_layer}

    def state(self) -> dict[str, torch.Tensor]:
        return {name: keep.cpu() for name, keep in self.masks.items()}


def input_norms(
    model: nn.Module, layers: list[str], ids: torch.Tensor, lengths: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Wanda's ||X_j||: the L2 norm of each input feature of each layer over the real
    (non-padding) tokens of the calibration batch."""
    modules = linear_layers(model)
    sums = {layer: torch.zeros(modules[layer].in_features) for layer in layers}
    valid = torch.ones(0)

    def hook(layer: str):
        def record(module, inputs, output) -> None:
            x = inputs[0].detach().float()
            sums[layer] += (x.pow(2) * valid[..., None]).sum(dim=(0, 1)).cpu()

        return record

    handles = [modules[layer].register_forward_hook(hook(layer)) for layer in layers]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(ids), 8):
                batch, n = ids[start : start + 8].to(device), lengths[start : start + 8]
                valid = (torch.arange(batch.shape[1])[None, :] < n[:, None]).float().to(device)
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {layer: s.sqrt() for layer, s in sums.items()}
