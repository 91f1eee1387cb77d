"""Sweeps (Hydra multirun) from the Hydra side: the callback that opens one MLflow parent run
over the trials and writes the summary at the end (registered in conf/config.yaml), a grid
trial continuing what an earlier run of its sweep left in its folder, and the checks of a
search's command line. The parent run's id and the swept keys reach the trials through
environment variables, so it works for in-process and subprocess launchers alike."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from pipeline.cli.launch import PARENT_ENV, SWEPT_ENV, TRIAL_ENV, launched_externally, tracking_uri
from pipeline.config.search import Search, is_search, load_search
from pipeline.config.train import TrainConfig
from pipeline.errors import UserError
from pipeline.files import write_text
from pipeline.sweeps import continuation
from pipeline.sweeps import stop as sweep_stop
from pipeline.tracking.names import describe, key_of, run_name
from pipeline.tracking.provenance import command

# A sweep folder's parent run, so that a sweep or search continued in its folder continues it.
PARENT_FILE = "mlflow_parent_run_id"


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.config.trainer import TrainerConfig
        from pipeline.config.validate import to_container
        from pipeline.run.distributed import check_multirun

        root = Path(config.hydra.sweep.dir).resolve()
        overrides = list(config.hydra.overrides.task)
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
            elif continuation.is_continued(root, overrides):
                print(
                    f"Continuing the sweep in {root}: finished and failed trials are kept, "
                    "stopped ones resume from their checkpoint, the others start."
                )
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        # A sweep continued in its folder may find the last stop's file there.
        stop = sweep_stop.marker_in(root)
        stop.unlink(missing_ok=True)
        sweep_stop.install(stop)
        if config.logger.name != "mlflow":
            return
        from pipeline.tracking.runs import reopen_run, start_parent_run

        swept = swept_keys(config)
        os.environ[SWEPT_ENV] = json.dumps(swept)
        sweep = {"sweep.overrides": " ".join(overrides), "sweep.dir": str(root)}
        if is_search(config.hydra.sweeper):
            sweep["sweep.search"] = OmegaConf.to_yaml(config.hydra.sweeper, resolve=True)
        uri, experiment = _store(config)
        known = root / PARENT_FILE
        if known.is_file():
            parent = reopen_run(uri, known.read_text().strip()).run_id
        else:
            outputs = config.paths.outputs
            name, line = parent_name(config, swept), sweep_command(config)
            parent = start_parent_run(uri, experiment, outputs, name, line, sweep)
            write_text(known, parent)
        os.environ[PARENT_ENV] = parent

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.sweeps.summary import summarize

        root = Path(config.hydra.sweep.dir).resolve()
        best, metric, files = summarize(config, root)
        signum = sweep_stop.stop_signal(sweep_stop.marker_in(root))
        stopped = f"Sweep stopped by {signal.Signals(signum).name}" if signum else None
        os.environ.pop(SWEPT_ENV, None)
        parent = os.environ.pop(PARENT_ENV, None)
        if parent:
            from pipeline.tracking.runs import finish_parent_run

            finish_parent_run(_store(config)[0], parent, best, metric, files, stopped)
            _register_best(config, best)
        if signum:
            again = sweep_command(config, f"hydra.sweep.dir={root}")
            print(
                f"{stopped}: the trials that were running saved a checkpoint; the others did "
                f"not start. Continue the sweep with:\n  {again}",
                file=sys.stderr,
            )
            sys.exit(128 + signum)


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep's trials differ in: a search's sampled parameters, a grid's swept
    overrides (a,b, range(), choice(), glob())."""
    if is_search(config.hydra.sweeper):
        return list(load_search(config.hydra.sweeper).params)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def parent_name(config: DictConfig, swept: list[str]) -> str:
    """`sweep <swept overrides> <the others>`, or `search <study> (<n> trials) <overrides>`."""
    choices, overrides = config.hydra.runtime.choices, list(config.hydra.overrides.task)
    if is_search(config.hydra.sweeper):
        search = load_search(config.hydra.sweeper)
        fixed = [o for o in overrides if key_of(o) != "hparams_search"]
        title = f"search {search.study_name} ({search.n_trials} trials)"
        return run_name(title, describe(fixed, choices))
    first = [o for o in overrides if key_of(o) in swept]
    rest = [o for o in overrides if key_of(o) not in swept]
    return run_name("sweep", describe([*first, *rest], choices))


def sweep_command(config: DictConfig, *more: str) -> str:
    """The sweep's command line (-m stands for Hydra's hydra.mode=MULTIRUN), then `more`
    (which replace the hydra overrides of the same keys)."""
    replaced = {"hydra.mode", *(key_of(o) for o in more)}
    own = [o for o in config.hydra.overrides.hydra if key_of(o) not in replaced]
    return command(["-m", *own, *config.hydra.overrides.task, *more])


def continued_trial(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """A grid trial, in case its folder holds what an earlier run of its sweep left there
    (sweeps/continuation.py): its config (resuming it from its checkpoint, if it was stopped),
    and what it returns without training when it had ended."""
    if os.environ.get(TRIAL_ENV) is not None or cfg.resume:
        return cfg, None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    plan, earlier = continuation.plan_trial(run_dir)
    if plan is continuation.Plan.KEEP:
        print(f"Trial {run_dir.name}: kept as it ended ({earlier.status.value}) before.")
        return cfg, continuation.kept_result(earlier)
    if plan is continuation.Plan.RESUME:
        return cfg.model_copy(update={"resume": str(run_dir)}), None
    return cfg, None


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
