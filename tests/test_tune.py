"""``rltransfer tune``: a tiny search end to end, the tuned scratch arm, pruning, resume after an interrupt, and
the config errors. Every trial runs in this process (one worker) on a few hundred steps."""

from __future__ import annotations

import copy
import json
import signal
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from rltransfer.cli import main
from rltransfer.core.config import load_config
from rltransfer.core.errors import ConfigError
from rltransfer.core.interrupt import Interrupted, request_stop
from rltransfer.rl.config import TrainConfig, TransferConfig
from rltransfer.tune import TUNE_CONFIG, TuneConfig, run_tune
from rltransfer.tune import trial as trial_module


@pytest.fixture
def tune(tmp_path: Path, tiny_source: Path, tiny_train: dict[str, Any]) -> dict[str, Any]:
    """Three trials per arm, one seed each, 512 steps, confirmed on two fresh seeds; long pole target."""
    return {
        "name": "tiny-tune",
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "source": {"path": str(tiny_source)},
        "target": {"id": "rltransfer/CartPoleLongPole-v1", "label": "LongPole"},
        "budget": 512,
        "n_envs": 4,
        "eval": {"every": 256, "episodes": 2},
        "agent": copy.deepcopy(tiny_train["agent"]),
        "trials": 3,
        "trial_seeds": [100],
        "confirm_seeds": [0, 1],
        "pruner": {"kind": "none"},
        "space": {
            "freeze": ["none", "all-but-heads"],
            "reinit": ["none", "critic"],
            "lr": {"low": 1e-4, "high": 3e-3, "log": True},
            "weight_decay": [0.0, 1e-4],
            "unfreeze_at": [None, 256],
            "hyperparams": {"n_epochs": [1, 2]},
            "decay_to": ["zero", "source"],
        },
        "execution": {"workers": 1},
    }


def _trials(tune_dir: Path, name: str, arm: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=f"{name}-{arm}", storage=f"sqlite:///{tune_dir / 'tune.db'}")
    return study.get_trials(deepcopy=False)


def test_a_tiny_search_writes_a_runnable_recipe_against_a_tuned_scratch(tune, tmp_path: Path) -> None:
    report = run_tune(tune)
    tune_dir = tmp_path / "runs" / "tiny-tune"
    for arm in ("transfer", "scratch"):
        trials = _trials(tune_dir, "tiny-tune", arm)
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3
        assert len({t.params["lr"] for t in trials}) == 3  # the search varied the learning rate
        assert report.best[arm]["value"] == max(t.value for t in trials)
    assert "freeze" in _trials(tune_dir, "tiny-tune", "transfer")[0].params
    assert "freeze" not in _trials(tune_dir, "tiny-tune", "scratch")[0].params

    # the confirmation pits the two winners against each other on the fresh seeds, each with its own recipe
    confirm = tune_dir / "confirm" / "runs" / "LongPole"
    for strategy, arm in (("scratch", "scratch"), ("tuned-transfer", "transfer")):
        for seed in (0, 1):
            run = yaml.safe_load((confirm / strategy / f"seed{seed}" / "config.yaml").read_text())
            assert run["seed"] == seed
            recipe = report.best[arm]["recipe"]
            assert run["agent"]["optimizer"]["lr"] == pytest.approx(recipe["lr"])
            assert run["agent"]["hyperparams"]["n_epochs"] == recipe["hyperparams.n_epochs"]
            assert run["agent"]["optimizer"]["decay_to"] == recipe.get("decay_to", "zero")
    assert report.verdict.startswith("2 seeds cannot show a difference")

    data = json.loads(report.tune_json.read_text())
    assert set(data["trials"]) == {"transfer", "scratch"} and len(data["trials"]["scratch"]) == 3
    markdown = report.tune_md.read_text()
    assert "## Verdict: 2 seeds cannot show" in markdown and "| scratch | " in markdown
    for png in ("history.png", "importance.png"):
        assert (tune_dir / png).read_bytes()[:4] == b"\x89PNG"

    # the best recipe is a config `rltransfer transfer` runs as it is
    best = load_config(report.best_transfer, TransferConfig)
    assert best.agent.optimizer.lr == pytest.approx(report.best["transfer"]["recipe"]["lr"])
    assert main(["transfer", str(report.best_transfer), "--no-progress", "--budget", "384"]) == 0
    assert (Path(best.log_root) / best.name / "best_model.zip").exists()
    assert load_config(report.best_scratch, TrainConfig).agent.optimizer.lr == pytest.approx(
        report.best["scratch"]["recipe"]["lr"]
    )

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = EventAccumulator(str(tune_dir / "summary" / "transfer")).Reload()
    assert [event.step for event in history.Scalars("tune/complete")] == [0, 1, 2]
    figures = EventAccumulator(str(tune_dir / "summary" / "figures")).Reload()
    assert {"tune/history", "tune/importance"} <= set(figures.Tags()["images"])


def test_an_unpromising_trial_is_pruned_at_its_first_evaluations(tune, tmp_path: Path) -> None:
    """Nothing learns (lr 0), so each trial's score is its zero-shot return: the tiny source's own actor head
    (44 on CartPole) trails a fresh random one (77) from the first evaluation, and the median pruner stops it
    there."""
    tune.update(trials=2, pruner={"kind": "median", "startup_trials": 1, "warmup_evals": 0})
    tune["target"] = {"id": "rltransfer/CartPole-v1", "label": "CartPole"}
    tune["space"] = {"freeze": ["none"], "reinit": ["none", "actor"], "lr": 0.0, "weight_decay": 0.0}
    tune_dir = tmp_path / "runs" / "tiny-tune"
    tune_dir.mkdir(parents=True)
    study = optuna.create_study(
        study_name="tiny-tune-transfer", storage=f"sqlite:///{tune_dir / 'tune.db'}", direction="maximize"
    )
    study.enqueue_trial({"reinit": "actor"})  # recipes of your own go first: Optuna's enqueue_trial
    study.enqueue_trial({"reinit": "none"})
    run_tune(tune)
    fresh_head, source_head = _trials(tune_dir, "tiny-tune", "transfer")
    assert fresh_head.state.name == "COMPLETE" and source_head.state.name == "PRUNED"
    assert source_head.intermediate_values[1] < fresh_head.intermediate_values[1]
    curve = json.loads(
        (tune_dir / "trials" / "transfer" / "trial1" / "seed100" / "evaluations.json").read_text()
    )
    assert curve[-1]["step"] < tune["budget"]  # stopped early: its budget was not spent
    record = json.loads((tune_dir / "trials" / "transfer" / "trial1" / "seed100" / "run.json").read_text())
    assert record["stop_reason"].startswith("pruned by the tuner")


def test_an_interrupted_search_resumes_keeping_finished_trials(
    tune, tmp_path: Path, monkeypatch, capsys
) -> None:
    tune_dir = tmp_path / "runs" / "tiny-tune"
    report_once = trial_module._Reporter.__call__

    def stop_in_trial_1(self, curve):
        if self.trial.number == 1 and len(curve) == 2:
            request_stop(signal.SIGINT)  # what Ctrl-C does, at trial 1's second evaluation
        return report_once(self, curve)

    monkeypatch.setattr(trial_module._Reporter, "__call__", stop_in_trial_1)
    with pytest.raises(Interrupted, match="rltransfer tune --resume"):
        run_tune(tune)
    interrupted = _trials(tune_dir, "tiny-tune", "transfer")
    assert [t.state.name for t in interrupted] == ["COMPLETE", "RUNNING"]
    first = (tune_dir / "trials" / "transfer" / "trial0" / "result.json").read_text()
    monkeypatch.setattr(trial_module._Reporter, "__call__", report_once)

    assert main(["tune", "--resume", str(tune_dir)]) == 0
    assert (
        "Trial 1 of the tiny-tune-transfer search was interrupted: it runs again." in capsys.readouterr().out
    )
    trials = _trials(tune_dir, "tiny-tune", "transfer")
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert (
        trials[1].user_attrs["interrupted"] and trials[2].params == trials[1].params
    )  # run again, same recipe
    assert (
        tune_dir / "trials" / "transfer" / "trial0" / "result.json"
    ).read_text() == first  # kept, not redone
    assert len(_trials(tune_dir, "tiny-tune", "scratch")) == 3
    assert (tune_dir / "tune.md").exists()
    saved = load_config(tune_dir / TUNE_CONFIG, TuneConfig)
    assert saved.trials == 3


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"confirm_seeds": [0, 100]}, "`confirm_seeds` and `trial_seeds` share seeds \\[100\\]"),
        ({"space": {"freeze": ["deep"]}}, "space.freeze.*unknown choice 'deep'"),
        ({"space": {"reinit": [{"mine": ["no_such_layer"]}]}}, "`space.reinit` mine: .*no_such_layer"),
        ({"space": {"lr": {"low": 0.01, "high": 0.001}}}, "space.lr"),
        ({"storage": "nosuchdb://x"}, "`storage` nosuchdb://x"),
        ({"space": {"optimizer": ["adam", "lion"]}}, "space.optimizer.*unknown optimizer 'lion'"),
        ({"space": {"lr": []}}, r"`space.lr` is invalid: List should have at least 1 item"),
        ({"space": {"optimizer": []}}, r"`space.optimizer` is invalid: List should have at least 1 item"),
        ({"space": {"lr": ["fast", "slow"]}}, r"`space.lr.0` is invalid: Input should be a valid number"),
        (
            {"space": {"decay_to": ["zero", "bogus"]}},
            r"`space.decay_to.1` is invalid: Input should be 'zero' or",
        ),
        (
            {"target": {"id": "Pendulum-v1"}},
            r"`target` Pendulum-v1 has no reward threshold; set the tuning's",
        ),
        (
            {"targets": [{"id": "CartPole-v1"}]},
            r"`targets` is not a known setting \(did you mean `target`\?\)",
        ),
    ],
)
def test_bad_tunings_are_refused_before_any_trial(tune, tmp_path: Path, change, expected) -> None:
    tune.update(change)
    with pytest.raises(ConfigError, match=expected):
        run_tune(tune)
    assert not (tmp_path / "runs" / "tiny-tune" / "trials").exists()


def test_a_tuning_named_like_a_run_leaves_its_folder_alone(tune, tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "tiny-tune"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"tiny-tune is the folder of a run \(it holds run.json\)"):
        run_tune(tune)
    assert [p.name for p in folder.iterdir()] == ["run.json"]


def test_a_worker_refuses_an_sqlite_storage_it_cannot_see(tmp_path: Path) -> None:
    from rltransfer.tune.storage import open_storage

    with pytest.raises(ConfigError, match="not on this machine.*SQLAlchemy URL"):
        open_storage(f"sqlite:///{tmp_path / 'elsewhere.db'}", create=False)
    assert not (tmp_path / "elsewhere.db").exists()


def test_without_optuna_the_error_names_the_extra(tune, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # what an install without the extra looks like
    with pytest.raises(ConfigError, match=r'pip install "rltransfer\[tune\]"'):
        run_tune(tune)


@pytest.mark.slow  # two subprocesses
def test_a_tuning_killed_mid_trial_resumes_without_redoing_finished_trials(tune, tmp_path: Path, cli) -> None:
    """SIGKILL (no chance to save anything) while trial 1 runs: the resume keeps trial 0 as it was, runs trial 1
    again with its parameters, and finishes the search and the confirmation."""
    import subprocess

    tune.update(budget=2048)
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(tune))
    tune_dir = tmp_path / "runs" / "tiny-tune"
    ready = tune_dir / "trials" / "transfer" / "trial1" / "seed100" / "evaluations.json"
    code, _ = cli.signal_when_ready(cli.rltransfer_cli("tune", str(config)), ready, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert [t.state.name for t in _trials(tune_dir, "tiny-tune", "transfer")] == ["COMPLETE", "RUNNING"]
    first = (tune_dir / "trials" / "transfer" / "trial0" / "result.json").read_text()

    resumed = subprocess.run(
        cli.rltransfer_cli("tune", "--resume", str(tune_dir)), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(tune_dir, "tiny-tune", "transfer")
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == trials[1].params
    assert (tune_dir / "trials" / "transfer" / "trial0" / "result.json").read_text() == first
    assert (tune_dir / "tune.md").is_file() and (tune_dir / "best-transfer.yaml").is_file()


def test_a_changed_search_is_not_mixed_with_the_stored_trials(tune, tmp_path: Path) -> None:
    tune_dir = tmp_path / "runs" / "tiny-tune"
    tune.update(trials=1, confirm_seeds=[0])
    run_tune(tune)
    tune["trials"] = 2  # searching on with the same settings is fine: only the new trial runs
    run_tune(tune)
    assert len(_trials(tune_dir, "tiny-tune", "transfer")) == 2
    saved = (tune_dir / TUNE_CONFIG).read_text()
    tune["space"]["weight_decay"] = [0.0, 0.01]
    with pytest.raises(ConfigError, match="tuning `tiny-tune` already holds trials with other settings"):
        run_tune(tune)
    tune["space"]["weight_decay"] = [0.0, 1e-4]
    with pytest.raises(ConfigError, match="`storage` sqlite:////nonexistent"):
        run_tune({**tune, "storage": "sqlite:////nonexistent/folder/x.db"})
    assert (tune_dir / TUNE_CONFIG).read_text() == saved  # refused calls leave what --resume continues alone


def test_the_tuning_and_evaluation_are_public_names() -> None:
    import rltransfer
    from rltransfer.rl.evaluate import evaluate

    assert (
        rltransfer.run_tune is run_tune
        and rltransfer.TuneConfig is TuneConfig
        and rltransfer.evaluate is evaluate
    )
    assert {"run_tune", "TuneConfig", "evaluate"} <= set(rltransfer.__all__)
