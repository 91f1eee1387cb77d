"""Train one experiment (or a sweep with -m):  python -m pipeline.train [overrides]"""

from __future__ import annotations

import sys

from pipeline.cli.app import hydra_command
from pipeline.config.train import TrainConfig


@hydra_command("config")
def main(cfg: TrainConfig) -> dict[str, float]:
    from hydra.core.hydra_config import HydraConfig

    from pipeline.cli.launch import launched_externally, multirun, tracking_uri
    from pipeline.config.paths import PROJECT_ROOT
    from pipeline.run.distributed import check_multirun
    from pipeline.tracking.uri import check_store, default_tracking_uri

    if multirun():
        launcher = HydraConfig.get().launcher.get("_target_", "")
        check_multirun(cfg.trainer, launcher, launched_externally())
        from pipeline.cli.sweep import continued_trial

        cfg, kept = continued_trial(cfg)
        if kept is not None:
            return kept
    if cfg.logger.name == "mlflow":
        # Before torch, Lightning and MLflow load: an unreachable server is reported at once.
        check_store(tracking_uri(cfg.logger, cfg.paths.outputs))
    from pipeline.cli.training import run_launch
    from pipeline.run.run import train
    from pipeline.run.summary import print_summary

    launch = run_launch(cfg)
    record = train(cfg, launch)
    if launch.rank == 0:
        local_store = record.tracking_uri == default_tracking_uri(PROJECT_ROOT / "outputs")
        print_summary(record, local_store)
    return record.metrics


def cli() -> None:
    """`--from-run <MLflow run id> [overrides]` runs a recorded run again: its recorded
    overrides, then these (see pipeline/cli/rerun.py). Anything else goes to Hydra as is."""
    args = sys.argv[1:]
    if "--from-run" in args:
        at = args.index("--from-run")
        if at + 1 >= len(args):
            sys.exit("error: --from-run needs an MLflow run id.")
        from pipeline.cli.rerun import rerun_arguments
        from pipeline.errors import UserError

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
