"""Sweeps (Hydra multirun) from the Hydra side: the callback that opens one MLflow parent run
over the trials and writes the summary at the end (registered in conf/config.yaml), and the
checks of a search's command line. The parent run's id reaches the trials through an
environment variable, so it works for in-process and subprocess launchers alike."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from pipeline.cli.launch import PARENT_ENV, command_line, launched_externally, tracking_uri
from pipeline.config.search import Search, is_search, load_search
from pipeline.errors import UserError
from pipeline.files import write_text
from pipeline.sweeps import stop as sweep_stop

# A sweep folder's parent run, so that a search resumed into the same folder continues it.
PARENT_FILE = "mlflow_parent_run_id"


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.config.trainer import TrainerConfig
        from pipeline.config.validate import to_container
        from pipeline.run.distributed import check_multirun

        # Refused before any parent run is created or any trial starts.
        try:
            trainer = TrainerConfig.model_validate(to_container(config.trainer))
        except ValidationError:
            trainer = None  # each trial reports its own config error
        try:
            if trainer is not None:
                launcher = config.hydra.launcher.get("_target_", "")
                check_multirun(trainer, launcher, launched_externally())
            if is_search(config.hydra.sweeper):
                check_search(config)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        # A search continued in its folder may find the last stop's file there.
        stop = sweep_stop.marker_in(config.hydra.sweep.dir)
        stop.unlink(missing_ok=True)
        sweep_stop.install(stop)
        if config.logger.name != "mlflow":
            return
        from pipeline.tracking.runs import reopen_run, start_parent_run

        root = Path(config.hydra.sweep.dir).resolve()
        sweep = {"sweep.overrides": " ".join(config.hydra.overrides.task), "sweep.dir": str(root)}
        if is_search(config.hydra.sweeper):
            sweep["sweep.search"] = OmegaConf.to_yaml(config.hydra.sweeper, resolve=True)
        uri, experiment = _store(config)
        known = root / PARENT_FILE
        if known.is_file():
            parent = reopen_run(uri, known.read_text().strip()).run_id
        else:
            outputs = config.paths.outputs
            parent = start_parent_run(uri, experiment, outputs, command_line(), sweep)
            write_text(known, parent)
        os.environ[PARENT_ENV] = parent

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.sweeps.summary import summarize

        root = Path(config.hydra.sweep.dir)
        best, metric, files = summarize(config, root)
        signum = sweep_stop.stop_signal(sweep_stop.marker_in(root))
        stopped = f"Sweep stopped by {signal.Signals(signum).name}" if signum else None
        parent = os.environ.pop(PARENT_ENV, None)
        if parent:
            from pipeline.tracking.runs import finish_parent_run

            finish_parent_run(_store(config)[0], parent, best, metric, files, stopped)
            _register_best(config, best)
        if signum:
            print(
                f"{stopped}: the trials that were running saved a checkpoint and each continues "
                "with resume=<its folder>; the others did not start.",
                file=sys.stderr,
            )
            sys.exit(128 + signum)


def _register_best(config: DictConfig, best: dict | None) -> None:
    """logger.register_as in a sweep or search registers its best trial's model, once."""
    name, alias = config.logger.get("register_as"), config.logger.get("alias", "candidate")
    if not name or best is None or not best.get("run_id"):
        return
    from pipeline.tracking.models import register_best

    try:
        version = register_best(_store(config)[0], best["run_id"], name, alias)
    except Exception as exc:
        print(
            f"warning: could not register the best trial's model as {name!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Its run and model "
            "are recorded; register it from the MLflow UI.",
            file=sys.stderr,
        )
        return
    print(
        f"Registered the best trial ({best['trial']}) as {name} version {version}: "
        f"models:/{name}@{alias}."
    )


def _store(config: DictConfig) -> tuple[str, str]:
    """The sweep's tracking store and experiment."""
    from pipeline.config.logger import LoggerConfig

    logger = LoggerConfig.model_validate(OmegaConf.to_container(config.logger, resolve=True))
    return tracking_uri(logger, config.paths.outputs), logger.experiment_name


def check_search(config: Any) -> Search:
    """The search definition, and command-line overrides that apply to every trial (a grid,
    a,b, makes no sense in a search)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    search = load_search(config.hydra.sweeper)
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    if swept:
        raise UserError(
            f"{' '.join(swept)}: a search samples its parameters from hydra.sweeper.params, so "
            "comma lists and ranges are not allowed on its command line. Put the parameter in "
            "the search space (conf/hparams_search/<name>.yaml), or run a grid sweep without "
            "hparams_search."
        )
    return search
