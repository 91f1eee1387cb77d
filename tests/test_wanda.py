"""Wanda on a transformers Llama: the activation norms it scores with, against a direct
computation, and the weights it keeps."""

from __future__ import annotations

import pytest
import torch
import transformers

from pipeline.config.sparsity import SparsityConfig
from pipeline.data.loader import Collator
from pipeline.model.hf import HFModel
from pipeline.sparsity.pruner import Pruner, input_norms
from pipeline.sparsity.targets import linear_layers, target_layers
from tests.helpers import llama_config, randomize

PAD = 0


@pytest.fixture(scope="module")
def llama() -> HFModel:
    config = llama_config(61, intermediate_size=48, pad_token_id=PAD)
    torch.manual_seed(0)
    return HFModel(randomize(transformers.LlamaForCausalLM(config)), None)


@pytest.fixture(scope="module")
def calibration() -> list[list[int]]:
    """Examples of different lengths, so that a padded batch has padding to leave out."""
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 61, (n,), generator=g).tolist() for n in (17, 5, 11, 17, 2, 9)]


def direct_norms(model: HFModel, layers: list[str], examples: list[list[int]]):
    """Every targeted Linear's inputs, one unpadded example at a time, stacked over all
    tokens: the L2 norm of each column."""
    modules = linear_layers(model)
    rows: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [
        modules[layer].register_forward_pre_hook(
            lambda m, args, layer=layer: rows[layer].append(args[0].reshape(-1, args[0].shape[-1]))
        )
        for layer in layers
    ]
    with torch.no_grad():
        for ids in examples:
            model(torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return {layer: torch.linalg.vector_norm(torch.cat(x), dim=0) for layer, x in rows.items()}


def test_input_norms_are_the_norms_of_each_layers_real_input_over_real_tokens(
    llama, calibration
) -> None:
    layers = target_layers(llama, "all-linear")
    assert len(layers) == 14  # q, k, v, o, gate, up, down of two layers
    batch = Collator("causal_lm", PAD, False)([(ids, None) for ids in calibration])
    norms = input_norms(llama, layers, batch["input_ids"], batch["lengths"])
    expected = direct_norms(llama, layers, calibration)
    for layer in layers:
        torch.testing.assert_close(norms[layer], expected[layer], rtol=1e-5, atol=1e-5)

    # ... and those inputs are the tensors Wanda means: a projection's own input, not the
    # residual stream (q_proj reads the normed hidden state, down_proj act(gate) * up).
    block = llama.hf.model.layers[0]
    inputs = torch.tensor([calibration[0]])
    with torch.no_grad():
        hidden = llama.hf(inputs, output_hidden_states=True).hidden_states[0]
        normed = block.input_layernorm(hidden)[0]
    q_norm = torch.linalg.vector_norm(normed, dim=0)
    torch.testing.assert_close(direct_norms(llama, [layers[0]], calibration[:1])[layers[0]], q_norm)
    gate_in = direct_norms(llama, [layers[4]], calibration[:1])
    assert layers[4].endswith("gate_proj") and layers[6].endswith("down_proj")
    mlp = block.mlp
    captured: list[torch.Tensor] = []
    handle = mlp.gate_proj.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        llama(inputs)
        handle.remove()
        x = captured[0]
        down_in = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    torch.testing.assert_close(gate_in[layers[4]], torch.linalg.vector_norm(x[0], dim=0))
    torch.testing.assert_close(
        direct_norms(llama, [layers[6]], calibration[:1])[layers[6]],
        torch.linalg.vector_norm(down_in[0], dim=0),
    )


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_wanda_keeps_the_highest_weight_times_norm_of_every_row(llama, pattern) -> None:
    model = llama
    dense = {n: p.detach().clone() for n, p in model.state_dict().items()}
    layers = target_layers(model, "all-linear")
    g = torch.Generator().manual_seed(2)
    # Norms far apart, so that |W| * ||X|| ranks weights unlike |W| alone.
    norms = {
        layer: torch.rand(linear_layers(model)[layer].in_features, generator=g).pow(4) * 100
        for layer in layers
    }
    cfg = SparsityConfig(name="wanda", method="wanda", pattern=pattern, final=0.5)
    try:
        Pruner(cfg, model, layers).prune_to(0.5, norms)
        differs = 0
        for layer in layers:
            weight = linear_layers(model)[layer].weight
            original = dense[f"{layer}.weight"]
            score = original.abs() * norms[layer]
            group = weight.shape[1] if pattern == "unstructured" else 4
            # Within each row (2:4: each group of 4 inputs), the half with the top scores.
            top = score.reshape(-1, group).topk(group // 2, dim=1).indices
            expected = torch.zeros_like(score, dtype=torch.bool).reshape(-1, group)
            expected = expected.scatter(1, top, True).view_as(score)
            assert torch.equal(weight != 0, expected), layer
            assert torch.equal(weight[expected], original[expected]), layer
            by_magnitude = original.abs().reshape(-1, group).topk(group // 2, dim=1).indices
            differs += int((top.sort(1).values != by_magnitude.sort(1).values).any(1).sum())
        assert differs > 0  # the norms changed the choice, so the test tells the two apart
    finally:
        model.load_state_dict(dense)
