"""Configs: shipped ones validate; every bad input is one clear error that names the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rltransfer.core.config import load_config, parse_config
from rltransfer.core.errors import ConfigError
from rltransfer.rl.config import TrainConfig, TransferConfig
from rltransfer.study.config import StudyConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "path",
    sorted([*CONFIGS.rglob("*.yaml"), *BENCHMARKS.glob("*.yaml")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_shipped_configs_validate(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if path.parent.name == "images":
        from rltransfer.vision.config import ImageConfig

        assert load_config(path, ImageConfig).stages
        return
    from rltransfer.rl.config import EnvConfig
    from rltransfer.rl.environment import check_env

    if "space" in data:  # rltransfer tune
        from rltransfer.tune import TuneConfig

        tune = load_config(path, TuneConfig)
        assert tune.trials > 0 and not set(tune.trial_seed_list()) & set(tune.confirm_seed_list())
        check_env(EnvConfig(id=tune.target.id, context=tune.target.context))
        return
    model = StudyConfig if "targets" in data else TransferConfig if "source" in data else TrainConfig
    config = load_config(path, model)
    assert config.budget > 0

    # every game a shipped config names exists, with context inside its family's ranges
    if isinstance(config, StudyConfig):
        for target in config.targets:
            check_env(EnvConfig(id=target.id, context=target.context))
        for strategy in config.strategies:
            for stage in getattr(strategy, "chain", []):
                check_env(stage.env)
    else:
        check_env(config.env)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"budgte": 10}, "`budgte` is not a known setting (did you mean `budget`?)"),
        (
            {"agent": {"optimizer": {"nme": "adam"}}},
            "`agent.optimizer.nme` is not a known setting (did you mean `name`?)",
        ),
        ({"budget": "lots"}, "`budget` is invalid"),
        ({"budget": 0}, "`budget` is invalid"),
        ({"eval": {"every": -5}}, "`eval.every` is invalid"),
        ({"agent": {"algo": "ppo2"}}, "`agent.algo` is invalid"),
        ({"agent": {"policy": {"dropout": 1.5}}}, "`agent.policy.dropout` is invalid"),
        ({"agent": {"policy": {"hidden": [64, -1]}}}, "`agent.policy.hidden` is invalid"),
        (
            {"agent": {"hyperparams": {"n_stpes": 8}}},
            "`agent.hyperparams.n_stpes` is not a setting of PPO (did you mean `n_steps`?)",
        ),
        ({"agent": {"hyperparams": {"learning_rate": 0.1}}}, "set it with `agent.optimizer.lr`"),
        ({"device": "gpu"}, "`device` is invalid"),
    ],
)
def test_bad_values_name_the_key(tiny_train, change, expected) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(tiny_train.get(key), dict):
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict) and isinstance(tiny_train[key].get(sub), dict):
                    tiny_train[key][sub].update(subvalue)
                else:
                    tiny_train[key][sub] = subvalue
        else:
            tiny_train[key] = value
    with pytest.raises(ConfigError) as error:
        parse_config(tiny_train, TrainConfig, "my.yaml")
    assert expected in str(error.value)
    assert str(error.value).startswith("my.yaml: ")


def test_missing_key_and_bad_yaml(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("name: x\nenv: {id: CartPole-v1}\n")
    with pytest.raises(ConfigError, match="`budget` is required but missing"):
        load_config(tmp_path / "a.yaml", TrainConfig)
    (tmp_path / "b.yaml").write_text("budget: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "b.yaml", TrainConfig)
    (tmp_path / "c.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        load_config(tmp_path / "c.yaml", TrainConfig)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", TrainConfig)


def test_overrides_use_dotted_keys(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("budget: 10\nenv: {id: CartPole-v1}\neval: {every: 5}\n")
    config = load_config(path, TrainConfig, {"agent.optimizer.lr": 0.5, "seed": 3})
    assert config.name == "train" and config.agent.optimizer.lr == 0.5 and config.seed == 3


def test_env_id_and_context_errors(tiny_train) -> None:
    from rltransfer.rl.training import train

    tiny_train["env"]["id"] = "rltransfer/CartPoleLongPol-v1"
    with pytest.raises(ConfigError, match="did you mean `rltransfer/CartPoleLongPole-v1`"):
        train(tiny_train, progress_bar=False)
    tiny_train["env"] = {"id": "rltransfer/CartPole-v1", "context": {"pole_length": 50.0}}
    with pytest.raises(
        ConfigError, match=r"`env.context.pole_length` = 50.0 is outside .* range \[0.05, 5.0\]"
    ):
        train(tiny_train, progress_bar=False)
    tiny_train["env"] = {"id": "rltransfer/CartPole-v1", "context": {"polelength": 1.0}}
    with pytest.raises(ConfigError, match="did you mean `pole_length`"):
        train(tiny_train, progress_bar=False)
    tiny_train["env"] = {"id": "no_such_module:Foo-v0"}
    with pytest.raises(ConfigError, match="cannot be imported"):
        train(tiny_train, progress_bar=False)
    tiny_train["env"] = {"id": "Pendulum-v1"}
    tiny_train["agent"]["algo"] = "dqn"
    tiny_train["agent"]["hyperparams"] = {}
    with pytest.raises(ConfigError, match="dqn needs Discrete actions"):
        train(tiny_train, progress_bar=False)


def test_budget_below_the_evaluation_interval_is_refused(tiny_train) -> None:
    tiny_train["budget"] = 100
    with pytest.raises(ConfigError, match=r"`budget` \(100\) is smaller than `eval.every` \(256\)"):
        parse_config(tiny_train, TrainConfig, "my.yaml")


def test_a2c_optimizer_switches_point_to_the_optimizer_section(tiny_train) -> None:
    tiny_train["agent"] = {"algo": "a2c", "hyperparams": {"use_rms_prop": False}}
    with pytest.raises(ConfigError, match="set it with `agent.optimizer.name`"):
        parse_config(tiny_train, TrainConfig, "my.yaml")


def test_training_failure_from_a_badly_typed_hyperparameter_is_a_clear_error(tiny_train) -> None:
    import json

    from rltransfer.rl.training import train

    tiny_train["agent"]["hyperparams"]["n_epochs"] = 2.5
    with pytest.raises(ConfigError, match="agent.hyperparams"):
        train(tiny_train, progress_bar=False)
    record = json.loads((Path(tiny_train["log_root"]) / "tiny-source" / "run.json").read_text())
    assert record["status"] == "failed" and "TypeError" in record["error"]


@pytest.mark.parametrize("name", [".", "..", "..."])
def test_a_run_name_is_one_plain_path_component(tiny_train, name) -> None:
    tiny_train["name"] = name
    with pytest.raises(ConfigError, match="`name` is invalid"):
        parse_config(tiny_train, TrainConfig)
    assert parse_config({**tiny_train, "name": "v1.2-final"}, TrainConfig).name == "v1.2-final"


def test_a_key_given_twice_is_refused_naming_the_key_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("budget: 1000\nenv: {id: CartPole-v1}\neval:\n  every: 500\n  every: 250\n")
    with pytest.raises(
        ConfigError, match=r"twice.yaml: the key `every` appears twice in one section \(lines 4 and 5\)"
    ):
        load_config(path, TrainConfig)
    path.write_text(
        "base: &base {every: 500}\nbudget: 1000\nenv: {id: CartPole-v1}\neval: {<<: *base, episodes: 2}\n"
    )
    with pytest.raises(ConfigError, match="`base` is not a known setting"):  # a YAML merge is not a duplicate
        load_config(path, TrainConfig)


def test_a_folder_given_as_config_is_named_as_a_folder(tmp_path: Path) -> None:
    from rltransfer.core.config import resolve_config_path

    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        resolve_config_path(str(tmp_path))


def test_a_misspelt_required_key_is_named_rather_than_called_missing(tiny_train) -> None:
    tiny_train["budgett"] = tiny_train.pop("budget")
    with pytest.raises(ConfigError, match=r"`budgett` is not a known setting \(did you mean `budget`\?\)"):
        parse_config(tiny_train, TrainConfig, "my.yaml")


def test_a_config_nested_too_deeply_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\nseed: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.yaml nests lists or mappings too deeply"):
        load_config(path, TrainConfig)


def test_a_huge_value_is_quoted_short_in_the_error(tmp_path: Path) -> None:
    levels = ['&a ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"&{b} [" + ",".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdef", "bcdefg", strict=True)]
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "budget: 512\nenv: {id: rltransfer/CartPole-v1}\neval: {every: 256}\nseed: ["
        + ", ".join(levels)
        + "]\n"
    )
    with pytest.raises(ConfigError, match=r"`seed` is invalid") as error:
        load_config(path, TrainConfig)
    assert len(str(error.value)) < 600
    from rltransfer.envs.base import family_of

    with pytest.raises(
        ConfigError, match=r"`env.context.pole_length`: a list .* must hold finite numbers"
    ) as error:
        family_of("rltransfer/CartPole-v1").validate({"pole_length": [["x"] * 9] * 10**5}, "env.context")
    assert len(str(error.value)) < 600


@pytest.mark.parametrize(
    ("shipped", "command", "key"),
    [("study", "study", "targets"), ("tune", "tune", "trials"), ("../images/digits", "image", "stages")],
)
def test_a_config_of_another_command_says_which_command_runs_it(shipped, command, key) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(CONFIGS / "cartpole" / f"{shipped}.yaml", TrainConfig)
    assert f"is a config of `rltransfer {command}` (it has `{key}`)" in str(error.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"agent": {"hyperparams": {"gamma": 5}}}, "`agent.hyperparams.gamma` must be a number in [0, 1]"),
        (
            {"agent": {"hyperparams": {"gae_lambda": "high"}}},
            "`agent.hyperparams.gae_lambda` must be a number",
        ),
        ({"eval": {"every": 256, "threshold": float("nan")}}, "`eval.threshold` is invalid"),
        ({"name": "x" * 300}, "`name` is invalid: String should have at most 200 characters"),
    ],
)
def test_values_that_cannot_work_are_refused_naming_the_key(tiny_train, change, expected) -> None:
    tiny_train.update(change)
    with pytest.raises(ConfigError) as error:
        parse_config(tiny_train, TrainConfig, "my.yaml")
    assert expected in str(error.value) and len(str(error.value)) < 400


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"seeds": True}, "`seeds` is invalid"),
        ({"seeds": [0, True]}, "`seeds.1` is invalid"),
        ({"threshold": float("nan")}, "`threshold` is invalid"),
    ],
)
def test_study_seeds_and_threshold_must_be_real_numbers(change, expected) -> None:
    from rltransfer.tune import TuneConfig

    study = {"name": "s", "source": {"path": "x"}, "targets": [{"id": "CartPole-v1"}], "budget": 10}
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        parse_config({**study, **change}, StudyConfig, "my.yaml")
    tune = load_config(CONFIGS / "cartpole" / "tune.yaml", TuneConfig)
    with pytest.raises(ConfigError, match=r"`confirm_seeds` is invalid"):
        parse_config({**tune.model_dump(), "confirm_seeds": True}, TuneConfig, "my.yaml")
