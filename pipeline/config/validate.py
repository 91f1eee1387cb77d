"""Validation of a composed config: types and ranges by pydantic, then the rules between keys;
the first problem becomes a UserError that names the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from pipeline.config.base import fail
from pipeline.config.train import TrainConfig
from pipeline.errors import UserError

Schema = TypeVar("Schema", bound=TrainConfig)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (interpolation errors become UserErrors)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as exc:
        raise UserError(
            f"Config error: {exc.full_key} is required but not set. "
            f"Set it on the command line ({exc.full_key}=...)."
        ) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(
            f"Config error: {key} could not be resolved ({str(exc).splitlines()[0]}). "
            f"Set it on the command line ({key}=...)."
        ) from None


def validate(
    cfg: DictConfig | dict[str, Any],
    schema: type[Schema] = TrainConfig,
    file_store_allowed: bool | None = None,
) -> Schema:
    """Check types, ranges and cross-field rules; raise UserError naming the first bad key.
    `file_store_allowed`: whether the environment opts into MLflow's file store
    (MLFLOW_ALLOW_FILE_STORE, read by the command); None where no command read it."""
    raw = to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    try:
        app = schema.model_validate(raw)
    except ValidationError as exc:
        raise _describe(exc.errors()[0], schema) from None
    app.check(file_store_allowed)
    return app


def _describe(error: Any, schema: type[BaseModel]) -> UserError:
    """One pydantic error as a sentence that names the key, the value and what is allowed."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = _known_keys(schema, error["loc"][:-1])
        return UserError(
            f"Config error: unknown key {key!r}. Allowed keys here: {', '.join(known)}. "
            "Check the spelling; a new key needs a schema field in pipeline/config/."
        )
    if error["type"] == "missing":
        return UserError(
            f"Config error: {key} is required but not set. Set it on the command line ({key}=...)."
        )
    message = error["msg"]
    if error["type"] == "string_pattern_mismatch":
        message = "must be a size such as 500MB, 5GB or 2GiB"
    if message.startswith("Input should be "):
        message = "must be " + message[len("Input should be ") :]
    # A check of pipeline/config/locations.py says what is allowed.
    message = message.removeprefix("Value error, ")
    return fail(key, error.get("input"), message)


def _known_keys(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model = schema
    for part in loc:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return sorted(model.model_fields)
