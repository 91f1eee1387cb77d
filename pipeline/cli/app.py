"""What every command shares: Hydra over conf/, validation first, and errors without tracebacks."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.cli.launch import stop_file
from pipeline.config.base import fail
from pipeline.config.commands import SCHEMAS
from pipeline.config.locations import check_folder, check_folder_name
from pipeline.config.paths import CONF_DIR, PROJECT_ROOT
from pipeline.config.validate import validate
from pipeline.errors import BUG_REPORT, Interrupted, TrialPruned, UserError
from pipeline.record import RunRecord, Status
from pipeline.sweeps import stop as sweep_stop

OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)


def _mode_from_the_command_line() -> None:
    """Hydra 1.3 composes the whole config once only to read `hydra.mode`, then again to run
    it: a seventh of a second each here, a third of a config error's time. No config of ours
    sets hydra.mode, so -m (or --multirun) decides, as it does for Hydra when nothing sets it;
    a `hydra.mode=` override on the command line still goes through Hydra's own lookup."""
    from hydra._internal.hydra import Hydra

    lookup = Hydra.get_mode

    def get_mode(self: Hydra, config_name: str | None, overrides: list[str]) -> Any:
        if any(o.lstrip("+~").startswith("hydra.mode=") for o in overrides):
            return lookup(self, config_name, overrides)
        return None  # Hydra then takes RUN, or MULTIRUN with -m

    Hydra.get_mode = get_mode  # type: ignore[method-assign]


_mode_from_the_command_line()


def hydra_command(config_name: str) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """Turn `fn(validated_config)` into a Hydra app reading conf/<config_name>.yaml, validated
    with that file's schema (config/commands.py).

    Torch and friends are imported inside `fn`, so `--cfg job` and config errors stay fast.
    """

    def decorate(fn: Callable[[Any], Any]) -> Callable[[], Any]:
        @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
        @functools.wraps(fn)
        def main(cfg: DictConfig) -> Any:
            _quiet_lightning()
            stop = stop_file()  # None outside a sweep
            if stop is not None:
                sweep_stop.install(stop)
                if (signum := sweep_stop.stop_signal(stop)) is not None:
                    discard_empty_run_dir()
                    name = signal.Signals(signum).name
                    error = f"not started: sweep stopped by {name}"
                    return {"status": Status.KILLED.value, "error": error}
            try:
                return fn(validate(cfg, SCHEMAS[config_name], file_store_allowed()))
            except TrialPruned as exc:
                # Not a failure: the search's pruner stopped this trial (recorded in run.json).
                print(f"Trial pruned: {exc}", file=sys.stderr)
                return {"status": Status.PRUNED.value, "error": str(exc)}
            except Exception as exc:
                if stop is not None:
                    if isinstance(exc, Interrupted):
                        # The trial's run is KILLED with its checkpoint; the sweep ends in order.
                        sweep_stop.request_stop(stop, exc.signum)
                        print(f"error: {exc}", file=sys.stderr)
                        return {"status": Status.KILLED.value, "error": str(exc)}
                    # One failed trial is recorded and the sweep goes on.
                    return _record_failed_trial(exc)
                if not isinstance(exc, UserError):
                    traceback.print_exc()
                    print(f"error: {BUG_REPORT}", file=sys.stderr)
                    sys.exit(1)
                discard_empty_run_dir()
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(exc.exit_code)

        @functools.wraps(main)
        def entry(*args: Any, **kwargs: Any) -> Any:
            if not args and not kwargs:  # run as a program: Hydra reads sys.argv
                check_overrides(sys.argv[1:])
            return main(*args, **kwargs)

        return entry

    return decorate


def check_overrides(argv: list[str]) -> None:
    """Refuse an override Hydra cannot parse in one sentence that names it and shows the
    quoting (Hydra's own message is a lexer trace that names neither)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    known, _ = get_args_parser().parse_known_args(argv)
    parser = OverridesParser.create()
    for text in known.overrides:
        try:
            parser.parse_overrides([text])
        except OverrideParseException as exc:
            reason = str(exc).strip().splitlines()[0].split(" expecting ")[0]
            key = text.split("=", 1)[0]
            print(
                f"error: The override {text!r} could not be parsed ({reason}). A value with "
                "spaces, commas, quotes or any of ~ [ ] { } ( ) : = needs quotes for Hydra, "
                f"inside quotes for the shell: '{key}=\"...\"', e.g. "
                "'prompt=\"Hey Sam, are you free?\"' or 'data.path=\"~/my.tsv\"'.",
                file=sys.stderr,
            )
            sys.exit(2)


def file_store_allowed() -> bool:
    """MLFLOW_ALLOW_FILE_STORE, read as MLflow reads it (which raises ValueError on any other
    value, when the store is opened)."""
    value = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "false")
    if value.lower() not in ("true", "false", "1", "0"):
        raise UserError(
            f"MLFLOW_ALLOW_FILE_STORE={value!r} is not allowed: true, false, 1 or 0, as MLflow "
            "reads it. Fix or unset it in the environment."
        )
    return value.lower() in ("true", "1")


class CheckOutputs(Callback):
    """Refuse an unwritable paths.outputs, or an experiment name that cannot be a folder, in
    one sentence before Hydra creates the run folder of them (which would otherwise fail with
    a traceback). Validation checks both again, with the same checks."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        checks = {"paths.outputs": check_folder, "logger.experiment_name": check_folder_name}
        for key, check in checks.items():
            value = str(OmegaConf.select(config, key))
            try:
                check(value)
            except ValueError as exc:
                print(f"error: {fail(key, value, str(exc))}", file=sys.stderr)
                sys.exit(2)


def discard_empty_run_dir() -> None:
    """A run refused before it did any work leaves no folder behind (Hydra makes it first).

    Only a folder Hydra made for this job, holding nothing but its .hydra/ and log, is removed;
    commands that run in place (hydra.output_subdir=null, run.dir=.) never remove anything.
    """
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is None:
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if (run_dir / ".hydra").is_dir() and all(
        p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()
    ):
        shutil.rmtree(run_dir, ignore_errors=True)


def _record_failed_trial(exc: Exception) -> dict[str, str]:
    """The trial's run.json says FAILED and why (the run itself writes one once it started)."""
    message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, UserError):
        traceback.print_exc()
        print(f"error: {BUG_REPORT}", file=sys.stderr)
    print(f"error: trial failed: {message}", file=sys.stderr)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if RunRecord.read(run_dir) is None:
        RunRecord(status=Status.FAILED, error=message).write(run_dir)
    return {"status": Status.FAILED.value, "error": message}


def _quiet_lightning() -> None:
    """Keep Lightning's advertising tip and an internal deprecation warning off the console."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
