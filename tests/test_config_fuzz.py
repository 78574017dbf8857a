"""Random and malformed configs: each is accepted or rejected with a ConfigError, never another exception."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rltransfer.core.config import load_config, parse_config
from rltransfer.core.errors import ConfigError
from rltransfer.rl.config import TrainConfig, TransferConfig
from rltransfer.study.config import StudyConfig
from rltransfer.vision.config import ImageConfig

DIGITS = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "configs" / "images" / "digits.yaml").read_text()
)

KEYS = [
    "name",
    "seed",
    "device",
    "budget",
    "env",
    "eval",
    "agent",
    "id",
    "context",
    "n_envs",
    "every",
    "episodes",
    "patience",
    "threshold",
    "algo",
    "hyperparams",
    "policy",
    "optimizer",
    "hidden",
    "dropout",
    "lr",
    "source",
    "freeze",
    "targets",
    "strategies",
    "seeds",
    "n_steps",
    "bogus",
    "pi",
    "vf",
    # image configs
    "model",
    "arch",
    "weights",
    "data",
    "digits",
    "classes",
    "per_class",
    "folder",
    "augment",
    "crop_scale",
    "stages",
    "train",
    "epochs",
    "lr_groups",
    "schedule",
    "baseline",
    "cache",
    "training",
    "center_loss",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["ppo", "dqn", "adam", "env", "auto", "cpu", "CartPole-v1", "linear"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=20,
)
configs = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(configs, st.sampled_from([TrainConfig, TransferConfig, StudyConfig, ImageConfig]))
def test_random_mappings_are_accepted_or_clearly_rejected(data, model) -> None:
    try:
        parse_config(data, model, "fuzz.yaml")
    except ConfigError as error:
        assert str(error).startswith("fuzz.yaml") and "\n" not in str(error)


@FAST
@given(st.text(max_size=200))
def test_random_text_files_are_accepted_or_clearly_rejected(tmp_path_factory, text) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, TrainConfig)
    except ConfigError:
        pass


@FAST
@given(configs)
def test_yaml_round_trip_of_random_configs(data) -> None:
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    try:
        parse_config(yaml.safe_load(text) or {}, TrainConfig, "fuzz.yaml")
    except ConfigError:
        pass


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [prefix] + [p for key, value in node.items() for p in _paths(value, (*prefix, key))]
    if isinstance(node, list):
        return [prefix] + [p for i, value in enumerate(node) for p in _paths(value, (*prefix, i))]
    return [prefix]


DIGITS_PATHS = [path for path in _paths(DIGITS) if path]


@FAST
@given(st.lists(st.tuples(st.sampled_from(DIGITS_PATHS), values), min_size=1, max_size=3))
def test_mutated_image_configs_are_accepted_or_clearly_rejected(changes) -> None:
    import copy

    data = copy.deepcopy(DIGITS)
    for path, value in changes:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this path
    try:
        parse_config(data, ImageConfig, "digits.yaml")
    except ConfigError as error:
        assert str(error).startswith("digits.yaml") and "\n" not in str(error)
