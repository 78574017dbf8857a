"""Random and malformed configs: each is accepted or rejected with a ConfigError, never another exception."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rltransfer.config import StudyConfig, TrainConfig, TransferConfig, load_config, parse_config
from rltransfer.errors import ConfigError

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
@given(configs, st.sampled_from([TrainConfig, TransferConfig, StudyConfig]))
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
