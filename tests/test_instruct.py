"""Instruction and chat data: the three record formats and their errors, the templates (the
`tokenizer` template renders as transformers' apply_chat_template does), and the loss mask:
exactly the assistant's tokens and their end-of-turn token are trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from pipeline.config.data import DataConfig
from pipeline.data.chat import TEMPLATES, render_chat
from pipeline.data.loader import IGNORE_INDEX, Collator
from pipeline.data.preparation import build_data
from pipeline.data.records import read_records
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from tests.helpers import run_cli, train_in_process

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 plus 3?"},
    {"role": "assistant", "content": "It is 6."},
]


def data_config(path: Path, **overrides) -> DataConfig:
    fields = {"name": "t", "task": "instruct", "format": "jsonl", "path": str(path)}
    fields |= {"val_fraction": 0.0, "test_fraction": 0.0, "max_length": 96}
    fields |= {"tokenizer": {"vocab_size": 300, "min_frequency": 1}}
    return DataConfig.model_validate({**fields, **overrides})


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_three_record_formats_read_as_the_same_conversation(tmp_path) -> None:
    instruction = {"instruction": "Add.", "input": "2 and 2", "output": "4"}
    messages = {"messages": [{"role": "user", "content": "Add.\n\n2 and 2"}]}
    messages["messages"].append({"role": "assistant", "content": "4"})
    sharegpt = {"conversations": [{"from": "human", "value": "Add.\n\n2 and 2"}]}
    sharegpt["conversations"].append({"from": "gpt", "value": "4"})
    path = write_jsonl(tmp_path / "d.jsonl", [instruction, messages, sharegpt])
    conversations = read_records(path, data_config(path)).conversations
    turns = [[(t["role"], t["content"]) for t in c] for c in conversations]
    assert turns[0] == turns[1] == turns[2] == [("user", "Add.\n\n2 and 2"), ("assistant", "4")]
    (tmp_path / "d.json").write_text(json.dumps([instruction]))
    cfg = data_config(tmp_path / "d.json", format="json", fields={"output": "output"})
    assert read_records(tmp_path / "d.json", cfg).conversations[0][1]["content"] == "4"


@pytest.mark.parametrize(
    ("record", "expect"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "line 2: unknown role 'robot'"),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            "line 2: turns out of order \\(assistant\\)",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn at its end"),
        (
            {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": " "}]},
            "line 2: the assistant turn is empty",
        ),
        ({"instruction": "x"}, "line 2: the record has no 'output'"),
        ({"prompt": "x"}, "none of 'messages', 'conversations' or 'instruction'"),
    ],
)
def test_a_bad_record_is_named_with_its_file_line_and_reason(tmp_path, record, expect) -> None:
    good = {"instruction": "x", "output": "y"}
    path = write_jsonl(tmp_path / "d.jsonl", [good, record])
    with pytest.raises(UserError, match=rf"d.jsonl, {expect}" if "line" in expect else expect):
        read_records(path, data_config(path))


def test_the_tokenizer_template_renders_as_transformers_does(tmp_path) -> None:
    """A pretrained tokenizer's own chat template (data.template=tokenizer) gives the text
    transformers' apply_chat_template gives, here with a Llama-3-style template."""
    texts = ["hello there", "what is two plus two"] * 20
    tokenizer = TextTokenizer.train(texts, 300, 1, TEMPLATES["llama3"].special_tokens)
    tokenizer.with_chat_template(TEMPLATES["llama3"].jinja, "<|eot_id|>").save(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for generation in (False, True):
        expected = theirs.apply_chat_template(
            CHAT[:-1] if generation else CHAT, tokenize=False, add_generation_prompt=generation
        )
        ours = render_chat(TEMPLATES["llama3"].jinja, CHAT[:-1] if generation else CHAT, generation)
        assert ours == expected


@pytest.mark.parametrize("template", ["alpaca", "chatml", "llama3"])
def test_exactly_the_assistant_turns_and_their_end_of_turn_are_trained(tmp_path, template):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}] * 4)
    bundle = build_data(data_config(path, template=template), 0)
    split, tokenizer = bundle.splits["train"], bundle.tokenizer
    end = TEMPLATES[template].end_of_turn
    example = (split.ids[0], {"trained": split.trained[0]})
    batch = Collator("instruct", tokenizer.pad_id, False)([example])
    targets = batch["targets"][0]
    trained = [int(t) for t in targets if t != IGNORE_INDEX]
    text = tokenizer.tokenizer.decode(trained, skip_special_tokens=False)
    assert text == f"4{end}It is 6.{end}"
    assert tokenizer.eos == end and tokenizer.chat_template == TEMPLATES[template].jinja
    every = build_data(data_config(path, template=template, train_on="all"), 0)
    assert all(all(m) for m in every.splits["train"].trained)


def test_a_prompt_that_fills_max_length_is_left_out_or_refused(tmp_path, capsys) -> None:
    rows = [{"instruction": "word " * 200, "output": "y"}, {"instruction": "x", "output": "y"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    bundle = build_data(data_config(path, max_length=32), 0)
    assert len(bundle.splits["train"].ids) == 1
    assert "1 of 2 conversations have a prompt that alone fills" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"alone fills data\.max_length=32 tokens"):
        build_data(data_config(path, max_length=32, long_sequences="error"), 0)


def test_an_instruct_run_saves_its_template_and_answers_in_it(tmp_path) -> None:
    record = train_in_process(
        [
            "experiment=instruct_demo",
            "data.synthetic_examples=200",
            "data.tokenizer.vocab_size=600",
            "trainer.max_epochs=1",
            "export.formats=[hf,gguf]",
        ],
        tmp_path,
    )
    assert record["status"] == "FINISHED" and record["task"] == "instruct"
    hf = Path(record["paths"]["exports"]["hf"])
    theirs = transformers.AutoTokenizer.from_pretrained(hf)
    assert theirs.chat_template == TEMPLATES["chatml"].jinja and theirs.eos_token == "<|im_end|>"
    modelfile = (Path(record["paths"]["exports"]["gguf"]) / "Modelfile").read_text()
    assert "<|im_start|>assistant" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    done = run_cli(
        "evaluate",
        f"ckpt={record['paths']['run_dir']}",
        f"paths.outputs={tmp_path / 'outputs'}",
        "max_new_tokens=8",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (folder,) = (tmp_path / "outputs" / "evaluate").glob("*/*")
    rows = [json.loads(line) for line in (folder / "responses.jsonl").read_text().splitlines()]
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert len(rows) == 20 and set(rows[0]) == {"prompt", "reference", "answer"}
    exact = sum(r["answer"].strip() == r["reference"].strip() for r in rows) / len(rows)
    assert metrics["test/exact_match"] == pytest.approx(exact)
    assert {"test/loss", "test/ppl", "test/token_f1"} <= set(metrics)
    # The same in MLflow: a run of its own (the training run was not tracked) with the answers
    # as a table.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, "attributes.run_name = 'evaluate-test'")
    assert run.data.metrics["test/exact_match"] == pytest.approx(exact)
    table = client.download_artifacts(run.info.run_id, "responses.json", str(tmp_path))
    logged = json.loads(Path(table).read_text())
    assert logged["columns"] == ["prompt", "reference", "answer"] and len(logged["data"]) == 20


def test_an_unreachable_judge_fails_fast_before_any_work() -> None:
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the probe is
    started = time.monotonic()
    done = run_cli("evaluate", "ckpt=.", f"judge.url=http://127.0.0.1:{port}/v1")
    assert done.returncode == 2 and time.monotonic() - started < 15
    assert done.stderr.startswith(f"error: The judge at http://127.0.0.1:{port}/v1 does not answer")
    assert "Traceback" not in done.stderr


def test_gradient_accumulation_keeps_the_loss_a_mean_over_trained_tokens(tmp_path) -> None:
    """One optimizer step over the same 8 conversations (answers of different lengths) gives
    the same weights as one batch of 8, two of 4 or four of 2: the loss is the mean over all
    their trained tokens, not a mean of the micro-batches' means."""
    import torch

    from pipeline import checkpoint

    weights = {}
    for batch, accumulate in ((8, 1), (4, 2), (2, 4)):
        record = train_in_process(
            [
                "experiment=instruct_demo",
                "data.synthetic_examples=64",
                "data.tokenizer.vocab_size=400",
                "trainer.max_epochs=null",
                "trainer.max_steps=1",
                f"optim.batch_size={batch}",
                f"optim.accumulate_grad_batches={accumulate}",
                "optim=sgd",  # the step is linear in the gradient (Adam's is nearly its sign)
                "optim.lr=1.0",
                "optim.warmup_steps=0",
                "export.formats=[]",
            ],
            _fresh(tmp_path / f"{batch}x{accumulate}"),
        )
        state = checkpoint.model_state(checkpoint.read(record["paths"]["last_checkpoint"]))
        weights[batch] = state
    for name, tensor in weights[8].items():
        assert torch.allclose(weights[4][name], tensor, atol=1e-6), name
        assert torch.allclose(weights[2][name], tensor, atol=1e-6), name


def _fresh(folder: Path) -> Path:
    folder.mkdir()
    return folder
