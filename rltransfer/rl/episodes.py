"""An evaluation's episodes: SB3's ``evaluate_policy`` on one env, or the same episodes played side by side.

SB3's ``EvalCallback`` plays an evaluation's episodes one after another on one env, one observation per forward
pass; on CartPole that is up to 5,000 forward passes per evaluation, more than a study's training steps. For games
whose randomness is drawn only when an episode starts (classic control), the episodes can be played side by side
instead: a stream env is reset exactly as the single evaluation env would be, the random state before each of its
resets is handed to one of several envs, and all of them step together with one batched forward pass. Each episode
starts where it would have started one after another, so with a deterministic policy the returns are the same, in
the same order.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rltransfer.core.errors import ConfigError
from rltransfer.envs.base import family_of

MAX_SIDE_BY_SIDE = 32
"""``eval.envs: auto`` plays at most this many episodes at once."""

RESET_ONLY_IDS = frozenset(
    {"CartPole-v0", "CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1"}
)
"""gymnasium games (besides rltransfer's families that declare it) whose steps draw no random numbers."""


def draws_only_at_reset(env_id: str, context: Mapping[str, Any]) -> bool:
    """Whether the game draws its random numbers only in ``reset`` (from ``np_random``), so an episode is fixed by
    the random state it starts from."""
    family = family_of(env_id)
    if family is not None:
        return family.draws_only_at_reset(env_id, context)
    return env_id.split(":")[-1] in RESET_ONLY_IDS


def check_side_by_side(
    env_id: str, context: Mapping[str, Any], requested: int | str, deterministic: bool, origin: str
) -> None:
    """A number of side-by-side evaluation envs the game cannot honour is an error naming ``eval.envs``
    (a config check: it runs before any run directory is made)."""
    if requested == "auto" or int(requested) <= 1:
        return
    at_reset = draws_only_at_reset(env_id, context)
    if at_reset and deterministic:
        return
    why = (
        "a stochastic policy's actions depend on the order the episodes are played in"
        if at_reset
        else f"{env_id} draws random numbers while an episode runs, so its episodes depend on the order "
        "they are played in"
    )
    raise ConfigError(
        f"{origin}: `eval.envs: {requested}`: evaluation episodes can only be played side by side with the same "
        "results as one after another when the game draws its random numbers at reset and the policy is "
        f"deterministic; here {why}. Set `eval.envs: auto` (or 1)."
    )


def side_by_side(
    env_id: str,
    context: Mapping[str, Any],
    requested: int | str,
    episodes: int,
    *,
    deterministic: bool,
    discrete_actions: bool,
) -> int:
    """How many envs an evaluation plays at once: ``eval.envs`` resolved (``auto``: every episode at once where
    that gives the same returns to the bit, else 1; see :func:`check_side_by_side` for a number).

    Continuous actions come out of a batched forward pass with rounding differences in their last bits (the
    returns agree to about 1e-6), so ``auto`` plays them one after another; a number asks for it anyway."""
    if requested == "auto":
        possible = draws_only_at_reset(env_id, context) and deterministic and discrete_actions
        return min(episodes, MAX_SIDE_BY_SIDE) if possible else 1
    check_side_by_side(env_id, context, requested, deterministic, "the run's config")
    return min(int(requested), episodes)


Success = Callable[[dict[str, Any], dict[str, Any]], None]


class EvaluationEpisodes:
    """Plays each evaluation's episodes on `eval_env`, one after another (SB3's ``evaluate_policy``), or, with
    ``side_by_side > 1``, on that many envs at once with the same starting states in the same order.

    ``make_env`` builds one more env exactly like the one inside `eval_env` (its game, context and Monitor);
    `seed` is the seed `eval_env` was given."""

    def __init__(
        self,
        eval_env: VecEnv,
        *,
        episodes: int,
        deterministic: bool,
        side_by_side: int = 1,
        make_env: Callable[[], gym.Env] | None = None,
        seed: int | None = None,
    ) -> None:
        self.eval_env = eval_env
        self.episodes = episodes
        self.deterministic = deterministic
        self.side_by_side = side_by_side if make_env is not None else 1
        if self.side_by_side > 1:
            assert make_env is not None
            self.stream = make_env()
            self.stream.np_random = seeding.np_random(seed)[0]
            self.envs = [make_env() for _ in range(self.side_by_side)]

    def play(self, model: BaseAlgorithm, success: Success | None = None) -> tuple[list[float], list[int]]:
        """The returns and lengths of one evaluation's episodes, in the order they were (or would have been)
        played one after another."""
        if self.side_by_side <= 1:
            returns, lengths = evaluate_policy(
                model,
                self.eval_env,
                n_eval_episodes=self.episodes,
                deterministic=self.deterministic,
                return_episode_rewards=True,
                warn=False,
                callback=success,
            )
            return list(returns), list(lengths)  # type: ignore[arg-type]
        return self._play_side_by_side(model, success)

    def state(self) -> dict[str, Any] | None:
        """The stream's random state, so a resumed run plays the episodes an uninterrupted one would."""
        if self.side_by_side <= 1:
            return None
        return self.stream.np_random.bit_generator.state

    def load_state(self, state: dict[str, Any] | None) -> None:
        if state is not None and self.side_by_side > 1:
            generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
            generator.bit_generator.state = state
            self.stream.np_random = generator

    def close(self) -> None:
        for env in [getattr(self, "stream", None), *getattr(self, "envs", [])]:
            if env is not None:
                env.close()

    def _starts(self) -> deque[tuple[int, np.random.Generator]]:
        """The random state before each reset of the single evaluation env: one per episode, then the reset
        that follows the last episode (SB3's vector env resets an env as soon as its episode ends)."""
        starts: deque[tuple[int, np.random.Generator]] = deque()
        for index in range(self.episodes):
            starts.append((index, copy.deepcopy(self.stream.np_random)))
            self.stream.reset()
        self.stream.reset()
        return starts

    def _play_side_by_side(
        self, model: BaseAlgorithm, success: Success | None
    ) -> tuple[list[float], list[int]]:
        pending = self._starts()
        returns: list[float] = [0.0] * self.episodes
        lengths: list[int] = [0] * self.episodes
        playing: dict[int, int] = {}  # env slot -> episode index
        drawn: dict[int, dict[str, Any]] = {}  # env slot -> its random state after the reset
        observations: dict[int, Any] = {}
        normalize = self.eval_env if isinstance(self.eval_env, VecNormalize) else None

        def start(slot: int) -> None:
            index, generator = pending.popleft()
            env = self.envs[slot]
            env.np_random = generator
            observations[slot], _ = env.reset()
            playing[slot] = index
            drawn[slot] = env.np_random.bit_generator.state

        for slot in range(min(len(self.envs), len(pending))):
            start(slot)
        while playing:
            slots = list(playing)
            batch = np.stack([observations[slot] for slot in slots])
            if normalize is not None:
                batch = normalize.normalize_obs(batch)
            actions, _ = model.predict(batch, deterministic=self.deterministic)  # type: ignore[arg-type]
            for slot, action in zip(slots, actions, strict=True):
                observation, _, terminated, truncated, info = self.envs[slot].step(action)
                observations[slot] = observation
                if not (terminated or truncated):
                    continue
                index = playing.pop(slot)
                if self.envs[slot].np_random.bit_generator.state != drawn[slot]:
                    raise ConfigError(
                        f"{self.envs[slot].spec.id if self.envs[slot].spec else 'The game'} drew random numbers "
                        "during an evaluation episode, so its episodes cannot be played side by side with the "
                        "same results as one after another. Set `eval.envs: 1`."
                    )
                returns[index], lengths[index] = float(info["episode"]["r"]), int(info["episode"]["l"])
                if success is not None:
                    success({"info": info, "done": True}, {})
                if pending:
                    start(slot)
        return returns, lengths
