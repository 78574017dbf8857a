"""Contexts drawn anew at every episode: in range, reproducible, set on the game, observed when asked, and the
evaluation's episodes still the same side by side as one after another."""

from __future__ import annotations

import pytest

import rltransfer
from rltransfer.core.errors import ConfigError
from rltransfer.rl.config import EnvConfig
from rltransfer.rl.environment import evaluation_env_maker, make_envs

CARTPOLE = "rltransfer/CartPole-v1"
DRAWN = {"pole_length": {"uniform": [0.3, 2.0]}, "masscart": [1.0, 5.0]}


def _contexts(env_config: EnvConfig, seed: int, resets: int) -> list[dict[str, float]]:
    train_env, eval_env = make_envs(env_config, seed)
    eval_env.close()
    train_env.reset()  # SB3 seeds its envs at the first reset
    game = train_env.envs[0]
    drawn = []
    for _ in range(resets):
        _, info = game.reset()
        drawn.append(info["context"])
    train_env.close()
    return drawn


def test_each_episode_draws_its_context_and_the_game_uses_it() -> None:
    env_config = EnvConfig(id=CARTPOLE, context=DRAWN, n_envs=1)
    drawn = _contexts(env_config, seed=0, resets=40)
    lengths = [c["pole_length"] for c in drawn]
    assert all(0.3 <= x <= 2.0 for x in lengths) and len(set(lengths)) == 40
    assert {c["masscart"] for c in drawn} == {1.0, 5.0}
    assert drawn == _contexts(env_config, seed=0, resets=40)  # a seeded env draws the same contexts
    assert drawn != _contexts(env_config, seed=1, resets=40)
    train_env, eval_env = make_envs(env_config, 0)
    train_env.reset()
    game = train_env.envs[0].unwrapped
    # the constants gymnasium derives from them follow
    assert game.total_mass == pytest.approx(game.masspole + game.masscart)
    assert game.polemass_length == pytest.approx(game.masspole * game.length)
    train_env.close()
    eval_env.close()


def test_the_drawn_context_can_follow_the_observation() -> None:
    env_config = EnvConfig(id=CARTPOLE, context=DRAWN, n_envs=2, observe_context=True)
    train_env, eval_env = make_envs(env_config, 0)
    assert train_env.observation_space.shape == (6,) and eval_env.observation_space.shape == (6,)
    assert list(train_env.observation_space.low[4:]) == [0.3, 1.0]
    observations = train_env.reset()
    for index, env in enumerate(train_env.envs):
        game = env.unwrapped
        assert observations[index, 4] == pytest.approx(game.length)
        assert observations[index, 5] == pytest.approx(game.masscart)
    train_env.close()
    eval_env.close()


def test_side_by_side_evaluation_plays_the_same_drawn_episodes() -> None:
    from rltransfer.agents import build_agent
    from rltransfer.agents.config import AgentConfig
    from rltransfer.rl.environment import EVAL_SEED_OFFSET
    from rltransfer.rl.episodes import EvaluationEpisodes

    env_config = EnvConfig(id=CARTPOLE, context=DRAWN, n_envs=1)
    train_env, _ = make_envs(env_config, 0)
    model = build_agent(AgentConfig(), train_env, seed=0, device="cpu")
    results = []
    for side_by_side in (1, 3):
        _, eval_env = make_envs(env_config, 0)
        played = EvaluationEpisodes(
            eval_env,
            episodes=7,
            deterministic=True,
            side_by_side=side_by_side,
            make_env=evaluation_env_maker(env_config),
            seed=EVAL_SEED_OFFSET,
        )
        results.append([played.play(model) for _ in range(2)])  # two evaluations in a row
        played.close()
    assert results[0] == results[1]
    assert len({length for lengths in (r[1] for r in results[0]) for length in lengths}) > 1


def test_a_source_trained_on_drawn_contexts_trains_and_records_them(tiny_train) -> None:
    config = {**tiny_train, "env": {"id": CARTPOLE, "n_envs": 2, "context": {"pole_length": [0.4, 1.5]}}}
    result = rltransfer.train(config, progress_bar=False)
    saved = rltransfer.load_config(result.run_dir / "config.yaml", rltransfer.TrainConfig)
    assert saved.env.context == {"pole_length": [0.4, 1.5]}
    evaluation = rltransfer.evaluate(result.run_dir, episodes=3, device="cpu")  # its own drawn game
    assert len(evaluation.returns) == 3


@pytest.mark.parametrize(
    ("context", "observe", "message"),
    [
        (
            {"pole_length": {"uniform": [2.0, 1.0]}},
            False,
            r"`env.context.pole_length` must be a number, a list",
        ),
        ({"pole_length": {"normal": [1.0, 0.1]}}, False, r"\{uniform: \[low, high\]\}"),
        ({"pole_length": {"uniform": [0.3, 9.0]}}, False, r"outside the parameter's range \[0.05, 5\]"),
        ({"pole_length": ["long"]}, False, r"must hold finite numbers"),
        ({"pole_lenght": [1.0, 2.0]}, False, r"did you mean `pole_length`"),
        ({"pole_length": 1.0}, True, r"`env.context` draws none"),
    ],
)
def test_bad_distributions_are_named(context: dict, observe: bool, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_envs(EnvConfig(id=CARTPOLE, context=context, n_envs=1, observe_context=observe), 0)


def test_families_that_cannot_redraw_say_so() -> None:
    pytest.importorskip("minatar")
    with pytest.raises(ConfigError, match="does not support") as error:
        context = {"difficulty_ramping": [0.0, 1.0]}
        make_envs(EnvConfig(id="rltransfer/MinAtarBreakout-v1", context=context, n_envs=1), 0)
    assert "CartPole" in str(error.value) and "env.context.difficulty_ramping" in str(error.value)


@pytest.mark.parametrize("value", [[float("nan"), 1.0], {"uniform": [0.5, float("inf")]}])
def test_values_that_are_not_finite_are_refused(value) -> None:
    with pytest.raises(ConfigError, match="finite"):
        make_envs(EnvConfig(id=CARTPOLE, context={"pole_length": value}, n_envs=1), 0)


def test_a_run_that_observed_its_context_is_evaluated_on_its_own_game(tiny_train) -> None:
    env = {"id": CARTPOLE, "n_envs": 2, "context": {"pole_length": [0.4, 1.5]}, "observe_context": True}
    result = rltransfer.train({**tiny_train, "env": env}, progress_bar=False)
    assert len(rltransfer.evaluate(result.run_dir, episodes=2, device="cpu").returns) == 2
    assert len(rltransfer.evaluate(result.run_dir, env=CARTPOLE, episodes=2, device="cpu").returns) == 2
