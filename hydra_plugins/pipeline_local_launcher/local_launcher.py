"""Hydra's joblib launcher, starting no more workers than the batch has trials. Loky starts every
worker at once, and a worker that never runs a trial lacks the handlers that stop a sweep in
order (pipeline/sweep_stop.py): a terminal's Ctrl-C would kill it, and joblib would then kill
the whole pool, trials and all."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher


class LocalLauncher(JoblibLauncher):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n_jobs = int(kwargs.get("n_jobs") or 1)
        # joblib's convention: -1 is every CPU, -2 all but one, ...
        self.n_jobs = n_jobs if n_jobs > 0 else max((os.cpu_count() or 1) + 1 + n_jobs, 1)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        self.joblib["n_jobs"] = max(min(self.n_jobs, len(job_overrides)), 1)
        return super().launch(job_overrides, initial_job_idx)
