"""The keys of the commands that use a trained model (conf/evaluate.yaml, generate.yaml,
export.yaml), on top of the training config they compose first."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from pipeline.config.base import Group
from pipeline.config.locations import ReadFile, ReadPath, check_url
from pipeline.config.train import TrainConfig


class FromCheckpoint(TrainConfig):
    ckpt: ReadPath
    """A run folder, a Lightning .ckpt, or an export folder in any layout model.init_from reads."""

    def _check_export(self) -> None:
        # The checkpoint decides whether adapter/merged can be written (pipeline.formats).
        pass


class JudgeConfig(Group):
    url: Annotated[str, AfterValidator(check_url)] | None = None
    """An OpenAI-compatible endpoint that scores instruct answers 0-100 (Ollama:
    http://127.0.0.1:11434/v1); null: no judge."""
    model: str = "llama3"
    """The judge model's name at that endpoint."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Seconds to wait for one score."""


class EvaluateConfig(FromCheckpoint):
    split: Literal["train", "val", "test"] = "test"
    """The split of the data that is evaluated."""
    max_new_tokens: int = Field(default=64, ge=1)
    """data.task=instruct: the longest answer generated per example."""
    max_examples: int | None = Field(default=None, ge=1)
    """Evaluate only the split's first N examples (null: all of them)."""
    judge: JudgeConfig = JudgeConfig()


class GenerateConfig(FromCheckpoint):
    prompt: str = ""
    """The text to continue (or, for a classifier, to label)."""
    max_new_tokens: int = Field(default=50, ge=0)
    """Tokens to generate."""
    temperature: float = Field(default=1.0, ge=0.0)
    """Sampling temperature; 0 is greedy decoding."""
    top_k: int | None = Field(default=None, gt=0)
    """Sample only among the k most likely tokens; null: all."""
    messages: ReadFile | None = None
    """A JSON file of a conversation so far ([{role, content}, ...]) that the model answers in
    its chat template, instead of prompt."""
    chat: bool | None = None
    """Write the prompt as a user turn in the model's chat template (and stop at its end of
    turn); null: when the model has a chat template (an instruct or chat model)."""


class ExportCommandConfig(FromCheckpoint):
    pass


# conf/<name>.yaml -> the schema that validates it.
SCHEMAS: dict[str, type[TrainConfig]] = {
    "config": TrainConfig,
    "evaluate": EvaluateConfig,
    "generate": GenerateConfig,
    "export": ExportCommandConfig,
}
