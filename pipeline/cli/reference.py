"""docs/config-reference.md, generated from the schema (make docs): every key of every group,
its type, its value in the default experiment, what is allowed and what it means (the docstring
under each schema field). tests/test_docs.py fails when the committed page is stale.

    python -m pipeline.cli.reference docs/config-reference.md
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config.base import SIZE_PATTERN, LocalPath
from pipeline.config.commands import SCHEMAS
from pipeline.config.paths import CONF_DIR
from pipeline.config.train import TrainConfig
from pipeline.files import write_text

PAGE = Path("docs") / "config-reference.md"
HEADER = """# Configuration reference

Generated from the schema (`pipeline/config/`) by `make docs`; do not edit by hand. Every key
can be set on the command line (`python -m pipeline.train group.key=value`) or in the group's
YAML file under `conf/`; [configuration.md](configuration.md) explains how configs compose.
"Default" is the key's value in the default experiment (`conf/config.yaml`); a group's other
presets set other values.
"""
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def render() -> str:
    defaults = _default_config()
    parts = [HEADER]
    for name, field in TrainConfig.model_fields.items():
        schema = _model(field.annotation)
        if schema is None:
            continue
        parts.append(_section(name, schema, defaults.get(name) or {}))
    parts.append(_section_top(defaults))
    parts.append(_section_search())
    for command, schema in SCHEMAS.items():
        own = {k: f for k, f in schema.model_fields.items() if k not in TrainConfig.model_fields}
        if own:
            title = f"## `python -m pipeline.{command}` (conf/{command}.yaml)"
            composed = _default_config(command)
            parts.append("\n".join([title, "", *_table(own, "", composed)]) + "\n")
    return "\n".join(parts)


def _default_config(name: str = "config", overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The composed default config, interpolations left as written (no machine paths)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import pipeline.cli.app  # noqa: F401  (registers the ${project_root:} resolver)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, list(overrides), return_hydra_config=bool(overrides))
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _section_search() -> str:
    """A search's hydra.sweeper.* keys, as hparams_search=optim sets them."""
    from pipeline.config.search import Search

    presets = ", ".join(sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml")))
    sweeper = _default_config("config", ("hparams_search=optim",))["hydra"]["sweeper"]
    title = f"## hparams_search (`-m hparams_search=`: {presets})"
    intro = (
        "A Bayesian search's study (conf/hydra/sweeper/optuna.yaml, then the preset); the "
        "defaults shown are hparams_search=optim's. Each entry of `params` is one dimension: "
        "`{type: float|int|categorical, low, high, log, step, choices}`."
    )
    rows = _table(Search.model_fields, "hydra.sweeper.", sweeper)
    return "\n".join([title, "", intro, "", *rows]) + "\n"


def _section(group: str, schema: type[BaseModel], defaults: dict[str, Any]) -> str:
    folder = CONF_DIR / group
    if folder.is_dir():
        presets = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        title = f"## {group} (`{group}=`: {presets})"
    else:
        title = f"## {group} (conf/config.yaml)"
    # The schema module's docstring says what the group chooses.
    intro = " ".join((sys.modules[schema.__module__].__doc__ or "").split())
    rows = _table(schema.model_fields, f"{group}.", defaults)
    return "\n".join([title, "", intro, "", *rows]) + "\n"


def _section_top(defaults: dict[str, Any]) -> str:
    top = {k: f for k, f in TrainConfig.model_fields.items() if _model(f.annotation) is None}
    return "\n".join(["## Top-level keys", "", *_table(top, "", defaults)]) + "\n"


def _table(fields: dict[str, FieldInfo], prefix: str, defaults: dict[str, Any]) -> list[str]:
    rows = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    rows += _rows(fields, prefix, defaults)
    return rows


def _rows(fields: dict[str, FieldInfo], prefix: str, defaults: dict[str, Any]) -> list[str]:
    rows = []
    for name, field in fields.items():
        nested = _model(field.annotation)
        value = defaults.get(name, field.default) if isinstance(defaults, dict) else field.default
        if nested is not None:
            rows += _rows(nested.model_fields, f"{prefix}{name}.", value or {})
            continue
        kind, allowed = _describe(field)
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        cells = [f"`{prefix}{name}`", kind, _value(value, field), allowed, meaning]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _model(annotation: Any) -> type[BaseModel] | None:
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _describe(field: FieldInfo) -> tuple[str, str]:
    """The field's type, and the values or range it allows."""
    annotation = field.annotation
    args = typing.get_args(annotation)
    optional = type(None) in args
    choices = [a for a in args if typing.get_origin(a) is typing.Literal]
    if typing.get_origin(annotation) is typing.Literal:
        choices = [annotation]
    allowed = [f"`{v}`" for c in choices for v in typing.get_args(c)]
    kinds = [_type_name(a) for a in args if a is not type(None)] if args else []
    kind = " or ".join(dict.fromkeys(kinds)) if _is_union(annotation) else _type_name(annotation)
    if LocalPath.__metadata__[0] in field.metadata:  # pydantic unwraps a required LocalPath
        kind = "path"
    bounds = [
        f"{symbol} {getattr(m, key)}"
        for m in field.metadata
        for key, symbol in _BOUNDS.items()
        if getattr(m, key, None) is not None
    ]
    patterns = [m.pattern for m in field.metadata if getattr(m, "pattern", None)]
    shown = [
        "a size such as 500MB, 5GB or 2GiB" if p == SIZE_PATTERN else f"`{p}`" for p in patterns
    ]
    text = ", ".join(allowed) or ", ".join(bounds) or "".join(shown)
    if optional:
        kind += " or null"
    return kind, text.replace("|", "\\|")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # a type with checks (config/locations.py): its base type
        path = LocalPath.__metadata__[0] in annotation.__metadata__
        return "path" if path else _type_name(annotation.__origin__)
    if origin is typing.Literal:
        return "choice"
    if origin in (list, tuple):
        inner = ", ".join(_type_name(a) for a in typing.get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if _is_union(annotation):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _value(value: Any, field: FieldInfo) -> str:
    if (value is None and field.is_required()) or value == "???":
        return "(required)"
    if value == "":
        return '`""`'
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`".replace("|", "\\|")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE
    write_text(out, render())
    print(f"written {out}")


if __name__ == "__main__":
    main()
