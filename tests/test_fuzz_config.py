"""Property-based fuzzing of the configuration (Hypothesis): any value of any type, in range or
beyond it, set on any key of the composed config, is either accepted or refused with a
UserError that names the key. Nothing else may escape validation: every other exception would
reach the user as a traceback."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from pydantic import BaseModel

from pipeline.config.commands import SCHEMAS
from pipeline.config.paths import CONF_DIR
from pipeline.config.train import TrainConfig
from pipeline.config.validate import validate
from pipeline.errors import UserError
from tests.helpers import compose_config


def leaf_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


KEYS = leaf_keys(TrainConfig)
EDGES = st.sampled_from([0, -1, 1, 2**31, -(2**63), 1e-300, 1e300, 0.5, 1.0, "", " ", "auto"])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    EDGES,
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "type", "name"]), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def composed() -> dict[str, Any]:
    return OmegaConf.to_container(compose_config(["model=gpt-tiny"]), resolve=True)


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part), dict) else node
    node[leaf] = value


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same cases on every run: a failure here is a failure everywhere
)
@given(data=st.data())
def test_any_value_on_any_key_is_accepted_or_refused_in_one_sentence(composed, data) -> None:
    config = copy.deepcopy(composed)
    changes = data.draw(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
    for key, value in changes:
        _set(config, key, value)
    try:
        validate(config, SCHEMAS["config"])
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message.strip() or message.startswith("Config error"), message
        assert "Traceback" not in message


INSTRUCT_ONLY = {"data.template", "data.train_on", "data.fields"}
TABLES_ONLY = {"data.text_column", "data.label_column"}


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_every_data_key_a_preset_can_use_is_settable(preset: str) -> None:
    """A key the schema has but the preset's YAML lacks cannot be set on the command line
    (Hydra: "Key 'packing' is not in struct"): each preset lists every key its tasks use."""
    composed = OmegaConf.to_container(compose_config([f"data={preset}"]), resolve=False)
    data = composed["data"]
    unused = TABLES_ONLY if data["task"] == "instruct" else INSTRUCT_ONLY
    for key in (k for k in KEYS if k.startswith("data.")):
        if any(key == u or key.startswith(f"{u}.") for u in unused):
            continue
        node = composed
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"data={preset} lacks {key}"
            node = node[part]
