"""Train one experiment (or a sweep with -m):  python -m pipeline.train [overrides]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.cli import hydra_command
from pipeline.config import COMMAND_KEYS, PROJECT_ROOT, AppConfig


@hydra_command("config")
def main(cfg: AppConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from pipeline.runner import print_summary, train
    from pipeline.tracking import default_tracking_uri

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = train(cfg, cfg.model_dump(mode="json", exclude=COMMAND_KEYS), run_dir)
    print_summary(record, record["tracking_uri"] == default_tracking_uri(PROJECT_ROOT / "outputs"))
    return record["metrics"]


if __name__ == "__main__":
    main()
