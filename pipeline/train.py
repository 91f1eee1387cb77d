"""Train one experiment (or a sweep with -m):  python -m pipeline.train [overrides]"""

from __future__ import annotations

import sys
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


def cli() -> None:
    """`--from-run <MLflow run id> [overrides]` runs a recorded run again: its recorded
    overrides, then these (see pipeline/provenance.py). Anything else goes to Hydra as is."""
    args = sys.argv[1:]
    if "--from-run" in args:
        at = args.index("--from-run")
        if at + 1 >= len(args):
            sys.exit("error: --from-run needs an MLflow run id.")
        from pipeline.errors import UserError
        from pipeline.provenance import rerun_arguments

        run_id, extra = args[at + 1], args[:at] + args[at + 2 :]
        try:
            args = rerun_arguments(run_id, extra)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        print(f"Running MLflow run {run_id} again with: {' '.join(args)}")
        sys.argv = [sys.argv[0], *args]
    main()


if __name__ == "__main__":
    cli()
