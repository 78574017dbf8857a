"""Choosing a source: the probe ranks candidates on the target, picks one that beats a random policy or advises
scratch, as `rltransfer select` and as a study's `source.path: auto`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from rltransfer.agents import build_agent
from rltransfer.agents.config import AgentConfig
from rltransfer.agents.freezing import save_model
from rltransfer.core.errors import ConfigError
from rltransfer.rl.config import EnvConfig
from rltransfer.rl.select import candidate_sources, select_source
from rltransfer.study.config import StudyConfig
from rltransfer.study.plan import plan_study

SHORT_ROLLOUTS = {"hyperparams": {"n_steps": 64, "batch_size": 64, "n_epochs": 1}}  # tiny fine-tuning
NORMAL = "rltransfer/CartPole-v1"
REVERSED = "rltransfer/CartPoleReversedForce-v1"


def _balancing_agent(path: Path, push: float) -> Path:
    """A PPO agent whose greedy action pushes the cart toward the side the pole leans to (`push` 1) or away
    from it (`push` -1): the classic angle + angular-velocity rule, written into the network's weights."""
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    config = AgentConfig.model_validate({"algo": "ppo", "policy": {"hidden": [8, 8]}})
    model = build_agent(config, env, seed=0, device="cpu")
    policy = model.policy
    with torch.no_grad():
        for param in policy.mlp_extractor.policy_net.parameters():
            param.zero_()
        first, second = policy.mlp_extractor.policy_net[0], policy.mlp_extractor.policy_net[2]
        first.weight[0, 2], first.weight[0, 3] = 5.0, 5.0  # tanh(5 * (angle + angular velocity))
        second.weight[0, 0] = 1.0
        policy.action_net.weight.zero_()
        policy.action_net.bias.zero_()
        policy.action_net.weight[1, 0], policy.action_net.weight[0, 0] = 3.0 * push, -3.0 * push
    env.close()
    return save_model(model, path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("candidates")
    return {
        "normal": _balancing_agent(folder / "normal.zip", 1.0),
        "reversed": _balancing_agent(folder / "reversed.zip", -1.0),
    }


def test_each_target_gets_the_source_that_fits_its_physics(sources: dict[str, Path]) -> None:
    candidates = [sources["normal"], sources["reversed"]]
    on_normal = select_source(candidates, EnvConfig(id=NORMAL), episodes=10, device="cpu")
    on_reversed = select_source(candidates, EnvConfig(id=REVERSED), episodes=10, device="cpu")
    assert on_normal.chosen is not None and on_normal.chosen.source == str(sources["normal"])
    assert on_reversed.chosen is not None and on_reversed.chosen.source == str(sources["reversed"])
    for selection in (on_normal, on_reversed):
        best, worst = selection.candidates
        assert best.beats_random and not worst.beats_random
        assert best.mean_return > 100 > selection.random_mean > worst.mean_return  # pushing the wrong way
        assert len(best.returns) == len(selection.random_returns) == 10
        assert best.copied > 0 and best.p_value is not None and best.p_value <= 0.05
    # the probe is deterministic: the same ranking and returns again
    again = select_source(candidates, EnvConfig(id=REVERSED), episodes=10, device="cpu")
    assert [c.returns for c in again.candidates] == [c.returns for c in on_reversed.candidates]


def test_scratch_is_advised_when_no_candidate_beats_random(sources: dict[str, Path]) -> None:
    selection = select_source([sources["reversed"]], EnvConfig(id=NORMAL), episodes=10, device="cpu")
    assert selection.chosen is None
    summary = selection.summary()
    assert "No source beats a random policy" in summary and "from scratch" in summary


def test_a_short_finetune_probe_learns_before_it_plays(sources: dict[str, Path]) -> None:
    selection = select_source(
        [sources["normal"]],
        EnvConfig(id=NORMAL),
        episodes=4,
        finetune_steps=64,
        device="cpu",
        agent=AgentConfig.model_validate(SHORT_ROLLOUTS),
    )
    (candidate,) = selection.candidates
    assert candidate.error is None and len(candidate.returns) == 4 and selection.finetune_steps == 64


def test_a_candidate_that_cannot_play_is_ranked_last_with_the_reason(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    sac = build_agent(
        AgentConfig.model_validate({"algo": "sac", "hyperparams": {"buffer_size": 10}}), env, seed=0
    )
    env.close()
    pendulum = save_model(sac, tmp_path / "pendulum-sac.zip")
    selection = select_source([pendulum, sources["normal"]], EnvConfig(id=NORMAL), episodes=10, device="cpu")
    assert [c.source for c in selection.candidates] == [str(sources["normal"]), str(pendulum)]
    assert "sac needs Box actions" in (selection.candidates[-1].error or "")
    assert selection.chosen is not None and selection.chosen.source == str(sources["normal"])
    assert "Not probed" in selection.summary()


def test_folders_of_candidates_and_bad_names(sources: dict[str, Path], tmp_path: Path) -> None:
    folder = sources["normal"].parent
    assert candidate_sources([folder]) == [str(sources["normal"]), str(sources["reversed"])]
    with pytest.raises(ConfigError, match="missing.zip does not exist"):
        candidate_sources([tmp_path / "missing.zip"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no finished run directory"):
        candidate_sources([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="at least 2 episodes"):
        select_source([sources["normal"]], EnvConfig(id=NORMAL), episodes=1)


def test_the_command_prints_the_ranking_and_writes_it(
    sources: dict[str, Path], tmp_path: Path, capsys
) -> None:
    from rltransfer.cli import main

    out = tmp_path / "ranking.json"
    folder = str(sources["normal"].parent)
    assert main(["select", folder, "--env", REVERSED, "--episodes", "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Chosen: {sources['reversed']}" in printed and "random policy" in printed
    data = json.loads(out.read_text())
    assert data["chosen"] == str(sources["reversed"]) and data["env_id"] == REVERSED
    assert main(["select", folder, "--env", NORMAL, "--context", "oops"]) == 2
    assert "--context 'oops' must look like KEY=VALUE" in capsys.readouterr().err
    assert main(["select", str(tmp_path / "nothing"), "--env", NORMAL]) == 2
    assert "does not exist" in capsys.readouterr().err


def _auto_study(sources: dict[str, Path], tmp_path: Path, **changes) -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "name": "chosen",
            "log_root": str(tmp_path / "runs"),
            "device": "cpu",
            "source": {
                "path": "auto",
                "candidates": [str(sources["normal"]), str(sources["reversed"])],
                "probe_episodes": 10,
            },
            "targets": [{"id": NORMAL, "label": "Normal"}, {"id": REVERSED, "label": "Reversed"}],
            "strategies": ["finetune"],
            "seeds": 1,
            "budget": 256,
            "eval": {"every": 128, "episodes": 2},
            "agent": SHORT_ROLLOUTS,
            **changes,
        }
    )


def test_a_study_starts_each_target_from_its_chosen_source(sources: dict[str, Path], tmp_path: Path) -> None:
    plan = plan_study(_auto_study(sources, tmp_path))
    assert plan.target_sources == {"Normal": sources["normal"], "Reversed": sources["reversed"]}
    transfers = {spec.target: spec for spec in plan.runs if spec.kind == "transfer"}
    assert transfers["Normal"].config["source"] == str(sources["normal"])
    assert transfers["Reversed"].config["source"] == str(sources["reversed"])
    assert transfers["Normal"].source_id != transfers["Reversed"].source_id
    # planned again (a resume), the same choices and so the same fingerprints
    again = plan_study(_auto_study(sources, tmp_path))
    assert [spec.fingerprint for spec in again.runs] == [spec.fingerprint for spec in plan.runs]


def test_a_study_with_chosen_sources_reports_the_ranking(sources: dict[str, Path], tmp_path: Path) -> None:
    from rltransfer import run_study

    config = _auto_study(sources, tmp_path, targets=[{"id": REVERSED, "label": "Reversed"}])
    report = run_study(config, workers=1, progress=False)
    text = report.report_md.read_text()
    assert f"Source: {sources['reversed']}, chosen by a probe" in text
    data = json.loads(report.report_json.read_text())
    assert data["source"] == {"Reversed": str(sources["reversed"])}
    assert data["selections"]["Reversed"]["chosen"] == str(sources["reversed"])


def test_auto_needs_candidates_and_candidates_need_auto(sources: dict[str, Path], tmp_path: Path) -> None:
    config = _auto_study(sources, tmp_path)
    with pytest.raises(ConfigError, match="`source.candidates`, which is empty"):
        config.model_copy(update={"source": config.source.model_copy(update={"candidates": []})}).check(
            "s.yaml"
        )
    with pytest.raises(ConfigError, match="only applies with `source.path: auto`"):
        config.model_copy(update={"source": config.source.model_copy(update={"path": None})}).check("s.yaml")


def test_one_agent_written_three_ways_is_probed_once(sources: dict[str, Path], monkeypatch) -> None:
    folder = sources["normal"].parent
    monkeypatch.chdir(folder)
    assert candidate_sources(["normal.zip", "./normal.zip", str(sources["normal"])]) == ["normal.zip"]


def test_a_context_that_is_not_yaml_is_named(sources: dict[str, Path], capsys) -> None:
    from rltransfer.cli import build_parser, main

    assert (
        main(["select", str(sources["normal"]), "--env", NORMAL, "--context", "pole_length={uniform: [0.3"])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "--context 'pole_length={uniform: [0.3': the value is not valid YAML" in err
        and "Traceback" not in err
    )
    assert "%%" not in build_parser()._subparsers._group_actions[0].choices["select"].format_help()


def test_auto_and_a_trained_source_are_not_both_given(sources: dict[str, Path], tmp_path: Path) -> None:
    config = _auto_study(sources, tmp_path)
    both = config.model_copy(
        update={"source": config.source.model_copy(update={"config": "cartpole/source"})}
    )
    with pytest.raises(ConfigError, match="`source.config` .* would be ignored"):
        both.check("s.yaml")
