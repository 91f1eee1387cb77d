"""What conf/config.yaml composes: one training run."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from pipeline.config.base import Group, fail
from pipeline.config.data import DataConfig
from pipeline.config.export import ExportConfig
from pipeline.config.locations import check_path_text
from pipeline.config.logger import LoggerConfig
from pipeline.config.lora import LoraConfig
from pipeline.config.model import ModelConfig, check_context, check_exportable
from pipeline.config.optim import OptimConfig
from pipeline.config.paths import PathsConfig
from pipeline.config.sparsity import SparsityConfig
from pipeline.config.trainer import TrainerConfig


class TrainConfig(Group):
    seed: int
    """One seed for the data split, weight init, and data order."""
    resume: Annotated[str, AfterValidator(check_path_text)] | None = None
    """Continue an interrupted run in its own folder and MLflow run: auto (the latest
    unfinished run of logger.experiment_name), a run folder, an MLflow run id, or a .ckpt."""
    paths: PathsConfig
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    lora: LoraConfig
    sparsity: SparsityConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    export: ExportConfig = ExportConfig()

    def check(self, file_store_allowed: bool | None = None) -> None:
        """Rules that involve more than one field: each group's own, then those between them.
        `file_store_allowed`: whether the environment opts into MLflow's file store."""
        self.model.check()
        self._check_export()
        self.lora.check()
        self.sparsity.check()
        if self.model.arch == "gpt" and not self.model.init_from:
            check_context(self.data.max_length, self.model.context_length, pretrained=False)
        self.data.check()
        self.trainer.check()
        self.logger.check(file_store_allowed)
        if self.logger.log_checkpoint == "best" and self.trainer.checkpoint.save_top_k == 0:
            raise fail(
                "logger.log_checkpoint",
                "best",
                "'last' or 'none' when trainer.checkpoint.save_top_k=0 (no best checkpoint is kept)",
            )

    def _check_export(self) -> None:
        check_exportable(self.model.attention.pattern, self.export.formats)
        if "gguf" in self.export.formats and self.data.task == "classification":
            raise fail(
                "export.formats",
                self.export.formats,
                "gguf only for a language model (data.task=causal_lm): llama.cpp and Ollama "
                "serve language models; export a classifier as hf or onnx",
            )
        lora_only = sorted({"adapter", "merged"} & set(self.export.formats))
        if lora_only and not self.lora.enabled:
            raise fail(
                "export.formats",
                self.export.formats,
                f"{', '.join(lora_only)} only with adapters: choose a lora preset (lora=default)",
            )
