"""Settings a library refuses only once it uses them. Lightning checks some when the Trainer
is built and others only when fitting, validation or testing starts (a validation interval
against the data, a strategy against the devices); the checks we make before a run starts
cannot foresee every one. Each becomes the same one-paragraph error here, and nowhere else:
the run is then FAILED with it as its `error` tag, and the command exits with 2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pytorch_lightning.utilities.exceptions import MisconfigurationException

from pipeline.errors import UserError, first_line

# Lightning refuses settings with MisconfigurationException, or with a plain ValueError raised
# by its own code; a ValueError from anywhere else is a bug and keeps its traceback.
_LIGHTNING = ("pytorch_lightning.", "lightning_fabric.", "lightning.")


@contextlib.contextmanager
def lightning_refusals() -> Iterator[None]:
    try:
        yield
    except (MisconfigurationException, ValueError) as exc:
        if not isinstance(exc, MisconfigurationException) and not _raised_by_lightning(exc):
            raise
        reason = first_line(exc).rstrip(".")
        raise UserError(
            f"Lightning refused the trainer settings: {reason}. Check trainer.strategy, "
            "trainer.devices, trainer.precision and trainer.val_check_interval (python -m "
            "pipeline.doctor shows what this machine supports)."
        ) from None


def _raised_by_lightning(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module.startswith(_LIGHTNING)
