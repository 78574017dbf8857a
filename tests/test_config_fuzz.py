"""Random and malformed configs: each is accepted or rejected with a ConfigError, never another exception."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rltransfer.core.config import dump_config, load_config, parse_config
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


def _parsed(data: object, model: type) -> str:
    """The parsed config as JSON, or the error it raised (the same input must give the same answer)."""
    try:
        return parse_config(data, model, "fuzz.yaml").model_dump_json()  # type: ignore[arg-type]
    except ConfigError as error:
        return f"error: {error}"


@FAST
@given(configs)
def test_yaml_round_trip_of_random_configs(data) -> None:
    try:
        text = yaml.safe_dump(data, sort_keys=False)
    except yaml.YAMLError:
        return
    assert _parsed(yaml.safe_load(text) or {}, TrainConfig) == _parsed(data, TrainConfig)


finite = st.floats(0.0, 1.0, allow_nan=False)
valid_train = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[A-Za-z0-9_.-]{0,6}[A-Za-z0-9_-][A-Za-z0-9_.-]{0,5}", fullmatch=True),
        "budget": st.integers(5000, 10**7),
        "env": st.fixed_dictionaries(
            {"id": st.sampled_from(["CartPole-v1", "rltransfer/CartPoleLongPole-v1"])},
            optional={
                "n_envs": st.integers(1, 16),
                "context": st.dictionaries(st.sampled_from(["pole_length", "masscart"]), st.floats(0.1, 5.0)),
            },
        ),
    },
    optional={
        "seed": st.integers(0, 10**6),
        "device": st.sampled_from(["auto", "cpu", "cuda:1"]),
        "eval": st.fixed_dictionaries(
            {},
            optional={
                "every": st.integers(1, 1000),
                "episodes": st.integers(1, 20),
                "patience": st.none() | st.integers(1, 10),
                "threshold": st.none() | st.just("env") | st.floats(-1e3, 1e3, allow_nan=False),
            },
        ),
        "agent": st.fixed_dictionaries(
            {"algo": st.sampled_from(["ppo", "a2c", "dqn"])},
            optional={
                "policy": st.fixed_dictionaries(
                    {},
                    optional={
                        "hidden": st.lists(st.integers(1, 256), max_size=3),
                        "dropout": st.floats(0.0, 0.9),
                        "activation": st.sampled_from(["tanh", "relu", "gelu"]),
                    },
                ),
                "optimizer": st.fixed_dictionaries(
                    {},
                    optional={
                        "name": st.sampled_from(["adam", "adamw", "rmsprop"]),
                        "lr": finite,
                        "weight_decay": finite,
                        "l1": finite,
                    },
                ),
            },
        ),
    },
)


@FAST
@given(valid_train)
def test_a_saved_config_reads_back_as_the_same_config(data) -> None:
    config = parse_config(data, TrainConfig, "fuzz.yaml")
    text = dump_config(config)
    again = parse_config(yaml.safe_load(text), TrainConfig, "config.yaml")
    assert again == config and dump_config(again) == text


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
