"""Sparsity: exact counts, masks that hold through training, schedules, LoRA merges, reports."""

from __future__ import annotations

import itertools
import math
import signal

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.assembly.restore import load_trained
from pipeline.config.sparsity import SparsityConfig
from pipeline.errors import UserError
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.run.module import param_groups
from pipeline.sparsity.masks import drop_and_grow, select
from pipeline.sparsity.measure import ActivationCounter
from pipeline.sparsity.pruner import Pruner, input_norms
from pipeline.sparsity.schedule import Schedule
from pipeline.sparsity.targets import target_layers
from tests.helpers import (
    TINY,
    app_config,
    kill_at_step,
    step_of,
    train_config,
    train_here,
    train_in_process,
)

SHAPE = GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2)


def pruner(**overrides) -> Pruner:
    torch.manual_seed(0)
    model = GPTModel(SHAPE)
    cfg = SparsityConfig(name="t", method="magnitude", final=0.5, **overrides)
    return Pruner(cfg, model, target_layers(model, cfg.target_modules))


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_layer_scope_prunes_exactly_floor_s_numel_of_every_layer(sparsity):
    p = pruner()
    p.prune_to(sparsity)
    assert len(p.weights) == 12  # q, k, v, out_proj, fc1, fc2 of 2 blocks; no head, no embedding
    for name, w in p.weights.items():
        assert zeros(w) == math.floor(sparsity * w.numel()), name
        assert int((~p.masks[name]).sum()) == math.floor(sparsity * w.numel())
    assert zeros(p.model.tok_emb.weight) == 0 and zeros(p.model.final_norm.weight) == 0


def test_global_scope_meets_the_total_exactly_and_respects_the_cap():
    p = pruner(scope="global")
    p.prune_to(0.6)
    total = sum(w.numel() for w in p.weights.values())
    assert sum(zeros(w) for w in p.weights.values()) == math.floor(0.6 * total)
    # Scale fc1 up so that one global ranking would strip the attention layers.
    p = pruner(scope="global", max_layer_sparsity=0.7)
    with torch.no_grad():
        for name, w in p.weights.items():
            w.mul_(10.0 if "fc1" in name else 1.0)
    p.prune_to(0.6)
    per_layer = {n: zeros(w) / w.numel() for n, w in p.weights.items()}
    assert max(per_layer.values()) <= 0.7
    assert sum(zeros(w) for w in p.weights.values()) == math.floor(0.6 * total)
    assert per_layer["trf_blocks.0.att.W_query.weight"] == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_groups_along_the_input_dimension_keep_at_most_n(pattern):
    n, m = map(int, pattern.split(":"))
    p = pruner(pattern=pattern)
    p.prune_to(0.0)
    for w in p.weights.values():
        groups = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
        assert int(groups.max()) <= n and int(groups.min()) == n


def test_wanda_prunes_each_row_by_weight_times_input_norm():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(8, 4, bias=False))
    # Input feature 0 is large: its small weights survive where magnitude would drop them.
    x = torch.randn(3, 5, 8) * torch.tensor([100.0, 1, 1, 1, 1, 1, 1, 1])
    with torch.no_grad():
        layer[0].weight.copy_(torch.rand(4, 8) + 0.1)
        layer[0].weight[:, 0] = 0.05
    lengths = torch.tensor([5, 3, 5])
    norms = input_norms(layer, ["0"], x, lengths)
    valid = torch.arange(5)[None, :] < lengths[:, None]
    expected = (x.pow(2) * valid[..., None]).sum((0, 1)).sqrt()
    torch.testing.assert_close(norms["0"], expected)
    cfg = SparsityConfig(name="t", method="wanda", final=0.5)
    p = Pruner(cfg, layer, ["0"])
    p.prune_to(0.5, norms)
    w = layer[0].weight
    assert all(zeros(row) == 4 for row in w)
    assert bool((w[:, 0] != 0).all())  # magnitude alone would prune column 0 first


def test_wanda_scores_pick_the_lowest_products_per_row():
    torch.manual_seed(1)
    layer = nn.Sequential(nn.Linear(16, 6))
    original = layer[0].weight.detach().clone()
    norms = {"0": torch.rand(16) + 0.1}
    Pruner(SparsityConfig(name="t", method="wanda", final=0.25), layer, ["0"]).prune_to(0.25, norms)
    score = original.abs() * norms["0"]
    for row, s in zip(layer[0].weight, score, strict=True):
        pruned = set(torch.nonzero(row == 0).flatten().tolist())
        assert pruned == set(torch.argsort(s)[:4].tolist())


@pytest.mark.parametrize("structure", ["ffn_neurons", "heads"])
def test_structured_pruning_removes_whole_neurons_or_heads(structure):
    p = pruner(pattern="structured", structure=structure)
    p.prune_to(0.5)
    for block in p.model.trf_blocks:
        if structure == "ffn_neurons":
            dead_rows = (block.ff.fc1.weight == 0).all(1)
            dead_cols = (block.ff.fc2.weight == 0).all(0)
            assert int(dead_rows.sum()) == math.floor(0.5 * 128)
            assert torch.equal(dead_rows, dead_cols)
            assert bool((block.ff.fc1.bias[dead_rows] == 0).all())
        else:
            head_dim = SHAPE.emb_dim // SHAPE.n_heads
            dead = (block.att.W_query.weight == 0).reshape(SHAPE.n_heads, -1).all(1)
            assert int(dead.sum()) == 2
            for proj in (block.att.W_key, block.att.W_value):
                assert torch.equal((proj.weight == 0).reshape(4, -1).all(1), dead)
            out = (block.att.out_proj.weight == 0).reshape(-1, 4, head_dim).all(0).all(1)
            assert torch.equal(out, dead)


def test_pruning_never_readmits_a_pruned_weight():
    p = pruner()
    p.prune_to(0.3)
    first = {n: m.clone() for n, m in p.masks.items()}
    with torch.no_grad():  # make the pruned entries the largest: they must stay pruned
        for name, w in p.weights.items():
            w.add_(100.0 * ~first[name])
    p.prune_to(0.6)
    for name, keep in p.masks.items():
        assert not bool((keep & ~first[name]).any())


def test_gradual_schedule_follows_the_cubic_and_ends_at_final():
    cfg = SparsityConfig(
        name="t", method="magnitude", schedule="gradual", initial=0.1, final=0.8,
        start_step=10, end_step=0.5, frequency=7,
    )  # fmt: skip
    s = Schedule.for_run(cfg, total_steps=100)
    updates = {t: s.target(t) for t in range(101) if s.target(t) is not None}
    assert sorted(updates) == [10, 17, 24, 31, 38, 45, 50]
    for t, level in updates.items():
        assert level == pytest.approx(0.8 + (0.1 - 0.8) * (1 - (t - 10) / 40) ** 3)
    assert updates[10] == pytest.approx(0.1) and updates[50] == 0.8


def test_staged_and_rigl_schedules():
    staged = SparsityConfig(
        name="t", method="magnitude", schedule="staged",
        stages=[(10, 0.3), (20, 0.5), (0.3, 0.7)],
    )  # fmt: skip
    s = Schedule.for_run(staged, 100)
    assert {t: s.target(t) for t in range(101) if s.target(t) is not None} == {
        10: 0.3, 20: 0.5, 30: 0.7,
    }  # fmt: skip
    rigl = SparsityConfig(name="t", method="rigl", final=0.5, end_step=100, frequency=25)
    r = Schedule.for_run(rigl, 200)
    assert r.target(0) == 0.5 and r.target(25) is None
    fractions = {t: r.regrowth(t) for t in range(201) if r.regrowth(t) is not None}
    assert sorted(fractions) == [25, 50, 75]
    assert fractions[50] == pytest.approx(0.3 / 2)
    with pytest.raises(UserError, match="ends at optimizer step 100"):
        Schedule.for_run(rigl, 60)


def test_rigl_drops_smallest_and_grows_largest_gradient_keeping_the_count():
    weight = torch.tensor([5.0, 4.0, 0.1, 3.0, 0.0, 0.0, 0.0, 0.0])
    keep = weight != 0
    grad = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 9.0, 2.0, 0.5])
    new = drop_and_grow(weight, keep, grad, 0.5)
    assert int(new.sum()) == 4
    assert new.tolist() == [True, True, False, False, False, True, True, False]


def test_select_ties_still_give_exact_counts():
    scores = {"a": torch.zeros(10), "b": torch.ones(7)}
    masks = select(scores, 0.5, "global")
    assert int((~masks["a"]).sum()) + int((~masks["b"]).sum()) == 8


def test_activation_hooks_count_without_changing_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.GELU())
    x = torch.randn(20, 6)
    reference = net(x)
    counter = ActivationCounter(net, eps=0.05)
    out = net(x)
    counter.remove()
    assert torch.equal(out, reference)
    hidden = net[1](net[0](x))
    gelu = net(x)
    fractions = counter.fractions()
    assert fractions["1/zero"] == int((hidden == 0).sum()) / hidden.numel()
    assert fractions["1/zero"] > 0.2
    assert fractions["3/below_eps"] == int((gelu.abs() < 0.05).sum()) / gelu.numel()


def test_l1_penalty_covers_the_targeted_weights_only():
    p = pruner(l1_lambda=0.01)
    expected = 0.01 * sum(w.abs().sum() for w in p.weights.values())
    assert float(p.penalty()) == pytest.approx(float(expected))
    p.penalty().backward()
    assert p.model.tok_emb.weight.grad is None and p.model.final_norm.weight.grad is None
    w = p.model.trf_blocks[0].ff.fc1.weight
    torch.testing.assert_close(w.grad, 0.01 * w.sign())


# -- through Lightning ----------------------------------------------------------------------

STRESS = [
    "optim.weight_decay=0.1",
    "optim.gradient_clip_val=0.5",
    "optim.accumulate_grad_batches=2",
    "trainer.precision=bf16-mixed",
    "trainer.checkpoint.save_top_k=-1",
]


def _checkpoints(run) -> list[dict]:
    paths = sorted((run / "checkpoints").glob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    return [torch.load(p, map_location="cpu", weights_only=True) for p in paths]


def test_gradual_masks_hold_through_adamw_clipping_accumulation_and_bf16(tmp_path):
    record = train_in_process(
        [
            "sparsity=gradual",
            "sparsity.start_step=2",
            "sparsity.end_step=15",
            "sparsity.frequency=4",
            "sparsity.final=0.6",
            "export.formats=[weights]",
            *STRESS,
        ],
        tmp_path,
    )
    run = tmp_path / "run"
    states = _checkpoints(run)
    assert len(states) == 2
    final = states[-1]
    masks = final["sparsity"]["masks"]
    # 400 examples -> 320 train / batch 16 = 20 micro-batches = 10 optimizer steps per epoch.
    assert final["global_step"] == 20
    history = dict(final["sparsity"]["history"])
    assert sorted(history) == [2, 6, 10, 14, 15]
    for t, level in history.items():
        assert level == pytest.approx(0.6 * (1 - (1 - (t - 2) / 13) ** 3), abs=1e-4)
    # At end_step the schedule gives final exactly; each layer rounds its count down.
    numels = [k.numel() for k in masks.values()]
    assert history[15] == sum(math.floor(0.6 * n) for n in numels) / sum(numels)
    state = final["state_dict"]
    optimizer = final["optimizer_states"][0]
    # The optimizer numbers parameters in the order of its groups.
    model = load_trained(run / "checkpoints" / "last.ckpt").model
    ids = {id(p): n for n, p in model.named_parameters()}
    names = [ids[id(p)] for g in param_groups(model, 0.1) for p in g["params"]]
    assert not any("weight_orig" in k or "weight_mask" in k for k in state)
    for name, keep in masks.items():
        weight = state[f"model.{name}"]
        assert int((weight[~keep] != 0).sum()) == 0, name
        assert int((~keep).sum()) == math.floor(0.6 * keep.numel())
        moments = optimizer["state"][names.index(name)]
        for key in ("exp_avg", "exp_avg_sq"):
            assert int((moments[key][~keep] != 0).sum()) == 0, (name, key)
    # Pruned weights never came back: every later mask lies inside the earlier one.
    for earlier, later in itertools.pairwise(states):
        for name, keep in later["sparsity"]["masks"].items():
            assert not bool((keep & ~earlier["sparsity"]["masks"][name]).any())
    # The report equals a recount from the exported weights.
    exported = torch.load(run / "export" / "weights" / "model.pth", weights_only=True)
    for layer, level in record["sparsity"].items():
        if layer != "total":
            w = exported[f"{layer}.weight"]
            assert zeros(w) / w.numel() == level
    assert record["sparsity"]["total"] == pytest.approx(0.6, abs=1e-4)
    assert "|" in (run / "sparsity" / "sparsity.md").read_text()


@pytest.mark.slow
def test_a_killed_run_resumes_masks_and_schedule_exactly(tmp_path):
    """SIGKILL mid-epoch and mid-schedule, resume=auto, and compare with a run that was never
    interrupted: the same masks, schedule history and weights."""
    args = [*TINY, "logger=none", "trainer.max_epochs=3", "export.formats=[]"]
    args += ["trainer.checkpoint.every_n_train_steps=3"]
    args += ["sparsity=gradual", "sparsity.start_step=5", "sparsity.end_step=45"]
    args += ["sparsity.frequency=5", "sparsity.measure.activations=false"]
    straight = train_here(tmp_path / "a", *args)  # in this process: only the killed one is not
    outputs = tmp_path / "b"
    kill_at_step(outputs, 24, signal.SIGKILL, *args).wait(timeout=60)
    (run_dir,) = (p.parent for p in outputs.glob("runs/*/*/*/run.json"))
    killed = step_of(run_dir / "checkpoints" / "last.ckpt")
    assert killed < 45 and killed % 20  # mid-epoch, before the schedule ended
    train_here(outputs, *args, "resume=auto")
    a = torch.load(straight["paths"]["last_checkpoint"], weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 60
    assert a["sparsity"]["history"] == b["sparsity"]["history"]
    assert [step for step, _ in b["sparsity"]["history"]] == list(range(5, 46, 5))
    for name, keep in a["sparsity"]["masks"].items():
        assert torch.equal(keep, b["sparsity"]["masks"][name]), name
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, atol=1e-6, rtol=1e-5)


def test_lora_keeps_masked_base_weights_and_merges_into_masked_weights(tmp_path):
    pretrained = tmp_path / "pre"
    pretrained.mkdir()
    train_in_process(["export.formats=[hf]", "trainer.max_epochs=1"], pretrained)
    base = pretrained / "run" / "export" / "hf"
    work = tmp_path / "lora"
    work.mkdir()
    record = train_in_process(
        [
            f"model.init_from={base}",
            "lora=default",
            "lora.dropout=0",
            "sparsity=wanda",
            "sparsity.calibration_samples=32",
            "trainer.max_epochs=1",
            "export.formats=[weights]",
        ],
        work,
    )
    from pipeline.lora import plain_copy

    trained = load_trained(record["paths"]["best_checkpoint"])
    masks = trained.masks
    assert masks and all(not k.endswith("bias") for k in masks)
    original = load_file(base / "model.safetensors")
    unmerged = plain_copy(trained.model, merge=False).state_dict()
    merged_dense = plain_copy(trained.model, merge=True).state_dict()
    exported = torch.load(work / "run/export/weights/model.pth", weights_only=True)
    merged_hf = load_file(work / "run/export/merged/model.safetensors")
    assert merged_hf  # the HF layout of the merged model exists too
    changed = 0
    for name, keep in masks.items():
        w = unmerged[name]
        assert int((w[~keep] != 0).sum()) == 0
        # Kept base entries are the pretrained ones: LoRA never trains the base.
        assert int((~keep).sum()) == math.floor(0.5 * keep.numel())
        torch.testing.assert_close(exported[name], merged_dense[name] * keep)
        changed += int((merged_dense[name][~keep] != 0).sum())
    assert changed > 0  # without re-masking, the merge would have filled the pruned entries
    assert len(original) > 0


def test_sparsity_metrics_and_report_reach_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    outputs = tmp_path / "outputs"
    cfg = app_config(
        [
            "model=gpt-tiny",
            "data.synthetic_examples=300",
            "data.tokenizer.vocab_size=600",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=2",
            "sparsity=magnitude",
            "sparsity.final=0.4",
            "export.formats=[]",
        ],
        outputs,
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = train_config(cfg, run_dir)
    client = MlflowClient(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    metrics = run.data.metrics
    assert metrics["sparsity/total"] == pytest.approx(0.4, abs=1e-4)
    assert metrics["sparsity/trf_blocks.0.ff.fc1"] == pytest.approx(0.4, abs=1e-4)
    assert 0.0 <= metrics["activation_sparsity/trf_blocks.0.ff.gelu/below_eps"] <= 1.0
    grads = [k for k in metrics if k.startswith("grad_sparsity/")]
    assert grads and all(0.0 <= metrics[k] <= 1.0 for k in grads)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "sparsity")}
    assert artifacts == {"sparsity/sparsity.csv", "sparsity/sparsity.md", "sparsity/sparsity.png"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sparsity.pattern=4:2", "N:M with 0 < N < M"),
        ("sparsity.final=1.0", "less than 1"),
        ("sparsity.final=-0.1", "greater than or equal to 0"),
        ("sparsity.schedule=staged", "sparsity.stages"),
        ("sparsity.stages=[[0.5,0.3],[3.0,0.5]]", "sparsity.stages=3.0"),
        ("sparsity.schedule=staged sparsity.stages=[[10,0.5],[20,0.3]]", "non-decreasing"),
        ("sparsity.accelerate=true", "only with sparsity.pattern=2:4"),
        ("sparsity.target_modules=[nothing_here]", "matches no module"),
    ],
)
def test_bad_sparsity_settings_are_refused(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        train_in_process(["sparsity=magnitude", *override.split()], tmp_path)


def test_accelerate_needs_cuda_with_sparse_tensor_cores(tmp_path):
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        pytest.skip("this machine has semi-structured sparse kernels")
    with pytest.raises(UserError, match="compute capability"):
        train_in_process(["sparsity=nm_2_4", "sparsity.accelerate=true"], tmp_path)


def test_a_hugging_face_llama_prunes_2_4_with_wanda_and_exports_it(tmp_path):
    import transformers

    from tests.helpers import tiny_llama

    tokenizer_source = app_config([*TINY, "logger=none"], tmp_path / "warm")
    from pipeline.data.preparation import build_data

    tokenizer = build_data(tokenizer_source.data, tokenizer_source.seed).tokenizer
    tiny_llama(tmp_path / "llama", tokenizer)
    record = train_in_process(
        [
            "model=hf",
            f"model.init_from={tmp_path / 'llama'}",
            "data.task=causal_lm",
            "data.label_column=null",
            "trainer.max_steps=4",
            "sparsity=wanda",
            "sparsity.pattern=2:4",
            "sparsity.calibration_samples=16",
        ],
        tmp_path,
    )
    layers = [k for k in record["sparsity"] if k != "total"]
    assert len(layers) == 14  # q, k, v, o, gate, up, down of 2 layers; not lm_head
    assert all(k.startswith("hf.model.layers.") for k in layers)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(record["paths"]["exports"]["hf"])
    for name, module in reloaded.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            groups = (module.weight != 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
            assert int(groups.max()) <= 2, name
    assert zeros(reloaded.lm_head.weight) == 0


def test_the_output_head_is_pruned_only_when_named():
    model = GPTModel(SHAPE)
    assert not any("out_head" in n for n in target_layers(model, "all-linear"))
    assert target_layers(model, ["out_head", "ff.fc1"]) == [
        "trf_blocks.0.ff.fc1",
        "trf_blocks.1.ff.fc1",
        "out_head",
    ]


def test_rigl_moves_masks_during_training_at_a_constant_count(tmp_path):
    train_in_process(
        [
            "sparsity=rigl",
            "sparsity.end_step=30",
            "sparsity.frequency=3",
            "trainer.max_epochs=2",
            "trainer.checkpoint.save_top_k=-1",
            "export.formats=[]",
        ],
        tmp_path,
    )
    first, last = _checkpoints(tmp_path / "run")
    moved = 0
    for name, keep in last["sparsity"]["masks"].items():
        before = first["sparsity"]["masks"][name]
        assert int(keep.sum()) == int(before.sum()) == keep.numel() - keep.numel() // 2
        moved += int((keep & ~before).sum())
        assert int((last["state_dict"][f"model.{name}"][~keep] != 0).sum()) == 0
    assert moved > 0  # weights pruned after the first epoch grew back, others were dropped
