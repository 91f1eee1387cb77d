"""Train one experiment (or a sweep with -m):  python -m pipeline.train [overrides]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.cli import hydra_command
from pipeline.config import COMMAND_KEYS, PROJECT_ROOT, AppConfig


@hydra_command("config")
def main(cfg: AppConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pipeline.distributed import check_multirun, global_rank
    from pipeline.tracking_uri import check_server, default_tracking_uri, resolve_tracking_uri

    check_multirun(cfg.trainer, HydraConfig.get().mode == RunMode.MULTIRUN)
    if cfg.logger.name == "mlflow":
        # Before torch, Lightning and MLflow load: an unreachable server is reported at once.
        check_server(resolve_tracking_uri(cfg.logger, cfg.paths.outputs))
    from pipeline.runner import print_summary, train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = train(cfg, cfg.model_dump(mode="json", exclude=COMMAND_KEYS), run_dir)
    if global_rank(cfg.trainer.devices) == 0:
        print_summary(
            record, record["tracking_uri"] == default_tracking_uri(PROJECT_ROOT / "outputs")
        )
    return record["metrics"]


if __name__ == "__main__":
    main()
