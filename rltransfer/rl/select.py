"""Choosing a source for a target game from several candidates, with a cheap probe (source-free transfer).

Each candidate becomes the target's agent the way a fine-tuning run would build it (every layer that fits is
copied, the others are fresh), optionally fine-tunes for a few steps, and plays K deterministic episodes of the
target. A uniformly random policy plays the same K episodes (same seeds, so the same starting states). A
candidate *beats random* when the sign-flip test on the K paired return differences finds it better at 5%,
Holm-corrected over the candidates; the best of those by mean return is chosen, and when none beats random the
recommendation is to learn from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rltransfer.agents.config import AgentConfig
from rltransfer.core.errors import ConfigError, RLTransferError
from rltransfer.rl.config import EnvConfig

ALPHA = 0.05
PROBE_EPISODES = 20


@dataclass
class CandidateScore:
    """One candidate source on the target: its probe's returns, and whether it beats a random policy."""

    source: str
    returns: list[float] = field(default_factory=list)
    copied: int = 0
    """Layers copied from the source (the others are fresh, e.g. a head for another action count)."""
    reinitialised: list[str] = field(default_factory=list)
    p_value: float | None = None
    """Holm-adjusted p-value of the paired test against the random policy (None: could not be probed)."""
    beats_random: bool = False
    error: str | None = None
    """Why the candidate could not be probed (another action space, unreadable file, ...)."""

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else math.nan


@dataclass
class SourceSelection:
    """The ranking of candidate sources on one target and the choice made from it."""

    env_id: str
    context: dict[str, Any]
    episodes: int
    finetune_steps: int
    seed: int
    random_returns: list[float]
    candidates: list[CandidateScore]
    """Ranked: probed candidates by mean return (highest first), then those that could not be probed."""

    @property
    def chosen(self) -> CandidateScore | None:
        """The best candidate that beats a random policy; None recommends learning from scratch."""
        return next((candidate for candidate in self.candidates if candidate.beats_random), None)

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_returns))

    def summary(self, advice: bool = True) -> str:
        """The ranking as a table, then the choice (with the command that uses it when `advice`)."""
        from rltransfer.core.tables import text_table

        probe = f"zero-shot, {self.episodes} episodes"
        if self.finetune_steps:
            probe = f"after {self.finetune_steps:,} fine-tuning steps, {self.episodes} episodes"
        rows = [["rank", "source", "mean return", "vs random (p, Holm)", "layers copied"]]
        for rank, candidate in enumerate(self.candidates, start=1):
            if candidate.error is not None:
                rows.append([str(rank), candidate.source, "-", "not probed", "-"])
                continue
            if candidate.beats_random:
                verdict = "better"
            elif (candidate.p_value or 1.0) <= ALPHA and candidate.mean_return < self.random_mean:
                verdict = "worse"
            else:
                verdict = "no clear difference"
            rows.append(
                [
                    str(rank),
                    candidate.source,
                    f"{candidate.mean_return:.1f}",
                    f"{verdict} ({candidate.p_value:.3f})",
                    str(candidate.copied),
                ]
            )
        rows.append(["", "random policy", f"{self.random_mean:.1f}", "", ""])
        lines = [text_table(rows, title=f"Sources on {self.env_id} ({probe})")]
        for candidate in self.candidates:
            if candidate.error is not None:
                lines.append(f"Not probed: {candidate.source}: {candidate.error}")
        chosen = self.chosen
        if chosen is None:
            lines.append(
                f"No source beats a random policy on {self.env_id} (paired sign-flip test at 5%, Holm-corrected): "
                "learn it from scratch, or probe with more episodes (--episodes) or a short fine-tune "
                "(--finetune STEPS)."
            )
        else:
            lines.append(
                f"Chosen: {chosen.source} (mean return {chosen.mean_return:.1f} against {self.random_mean:.1f} "
                "for a random policy)."
                + (f" Transfer it: rltransfer transfer CONFIG --set source={chosen.source}" if advice else "")
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["chosen"] = self.chosen.source if self.chosen else None
        data["random_mean"] = self.random_mean
        for candidate, entry in zip(self.candidates, data["candidates"], strict=True):
            entry["mean_return"] = None if candidate.error else candidate.mean_return
        return data


def candidate_sources(items: Sequence[str | Path]) -> list[str]:
    """The candidates named by `items`: run directories, SB3 zips, Hub addresses, or folders holding them."""
    from rltransfer.rl.hub import is_hub

    found: list[str] = []
    for item in items:
        path = Path(item)
        if is_hub(str(item)) or path.is_file() or (path.is_dir() and (path / "best_model.zip").is_file()):
            found.append(str(item))
            continue
        if not path.is_dir():
            raise ConfigError(
                f"Candidate source {item} does not exist. Give rltransfer run directories, SB3 .zip files, "
                "hf:// addresses, or a folder that holds run directories or .zip files."
            )
        inside = sorted(
            str(child)
            for child in path.iterdir()
            if (child.is_dir() and (child / "best_model.zip").is_file()) or child.suffix == ".zip"
        )
        if not inside:
            raise ConfigError(
                f"The folder {item} holds no finished run directory (with a best_model.zip) and no .zip file, "
                "so it names no candidate source."
            )
        found += inside
    if not found:
        raise ConfigError("No candidate source was given: name at least one run directory or .zip file.")
    unique: dict[str, str] = {}  # one probe per agent, however its path is written (src, src/, ./src)
    for name in found:
        unique.setdefault(name if is_hub(name) else str(Path(name).resolve()), name)
    return list(unique.values())


class _RandomPolicy:
    """Uniformly random actions, for SB3's ``evaluate_policy``."""

    def __init__(self, action_space: Any, seed: int) -> None:
        self.action_space = action_space
        self.action_space.seed(seed)

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ):
        count = (
            len(observation) if not isinstance(observation, dict) else len(next(iter(observation.values())))
        )
        return np.stack([self.action_space.sample() for _ in range(count)]), None


def select_source(
    sources: Sequence[str | Path],
    env: EnvConfig,
    *,
    episodes: int = PROBE_EPISODES,
    finetune_steps: int = 0,
    seed: int = 0,
    device: str = "auto",
    trust: bool = False,
    agent: AgentConfig | None = None,
) -> SourceSelection:
    """Rank candidate sources on the target `env` by the return of their probe and choose one (or none).

    `agent` changes each candidate's agent as a transfer config's ``agent`` section does (e.g. the fine-tuning
    hyperparameters of the probe)."""
    from rltransfer.core.config import check_device
    from rltransfer.rl.environment import check_env
    from rltransfer.study.stats import holm, sign_flip_pvalue

    if episodes < 2:
        raise ConfigError(
            f"The probe needs at least 2 episodes to compare with a random policy, got {episodes}."
        )
    if finetune_steps < 0:
        raise ConfigError(f"--finetune must be a number of steps (0 or more), got {finetune_steps}.")
    try:
        check_device(device)
    except ValueError as error:
        raise ConfigError(f"--device {device!r}: {error}.") from None
    check_env(env, "env")
    names = candidate_sources(sources)
    random_returns = _play(env, seed, episodes, lambda space: _RandomPolicy(space, seed))
    scores = [_probe(name, env, episodes, finetune_steps, seed, device, trust, agent) for name in names]
    probed = {score.source: score for score in scores if score.error is None}
    pvalues = {
        name: sign_flip_pvalue(np.asarray(score.returns) - np.asarray(random_returns))
        for name, score in probed.items()
    }
    for name, adjusted in holm(pvalues, ALPHA).items():
        score = probed[name]
        score.p_value = adjusted
        score.beats_random = adjusted <= ALPHA and score.mean_return > float(np.mean(random_returns))
    ranked = sorted(probed.values(), key=lambda score: -score.mean_return)
    ranked += [score for score in scores if score.error is not None]
    return SourceSelection(env.id, dict(env.context), episodes, finetune_steps, seed, random_returns, ranked)


def _play(
    env: EnvConfig, seed: int, episodes: int, make_policy: Callable[[Any], Any], scaling: Any = None
) -> list[float]:
    """The returns of `episodes` deterministic episodes on the evaluation env a run with `seed` would use, side by
    side where that gives the same returns as one after another (:mod:`rltransfer.rl.episodes`); `make_policy`
    gives the player (anything with SB3's ``predict``) for the env's action space."""
    from gymnasium import spaces

    from rltransfer.rl.environment import EVAL_SEED_OFFSET, evaluation_env_maker, make_envs
    from rltransfer.rl.episodes import EvaluationEpisodes, side_by_side
    from rltransfer.rl.normalization import apply_scaling, scaling_for

    train_env, eval_env = make_envs(env.model_copy(update={"n_envs": 1}), seed)
    train_env.close()
    eval_env = apply_scaling(eval_env, scaling_for(eval_env, scaling, env.id))
    model = make_policy(eval_env.action_space)
    discrete = isinstance(eval_env.action_space, spaces.Discrete)
    played = EvaluationEpisodes(
        eval_env,
        episodes=episodes,
        deterministic=True,
        side_by_side=side_by_side(
            env.id, env.context, "auto", episodes, deterministic=True, discrete_actions=discrete
        ),
        make_env=evaluation_env_maker(env),
        seed=seed + EVAL_SEED_OFFSET,
    )
    try:
        returns, _ = played.play(model)
    finally:
        played.close()
        eval_env.close()
    return [float(value) for value in returns]


def _probe(
    name: str,
    env: EnvConfig,
    episodes: int,
    finetune_steps: int,
    seed: int,
    device: str,
    trust: bool,
    given: AgentConfig | None,
) -> CandidateScore:
    """One candidate as the target's agent (what fits copied), fine-tuned for `finetune_steps`, then played."""
    from rltransfer.agents.builder import build_agent
    from rltransfer.agents.config import inherit_agent
    from rltransfer.core.device import resolve_device
    from rltransfer.rl.environment import make_envs
    from rltransfer.rl.mapping import map_weights
    from rltransfer.rl.normalization import apply_scaling, scaling_for
    from rltransfer.rl.sources import load_source, source_agent_config

    try:
        source = load_source(name, trust=trust)
        agent = inherit_agent(source_agent_config(source), given, "the probe's agent")
    except RLTransferError as error:
        return CandidateScore(name, error=str(error))
    if not finetune_steps and "buffer_size" in _init_args(agent.algo):  # nothing learns: a tiny buffer
        agent = agent.model_copy(
            update={"hyperparams": {**agent.hyperparams, "buffer_size": 1, "optimize_memory_usage": False}}
        )
    train_env, eval_env = make_envs(env, seed)
    eval_env.close()
    try:
        train_env = apply_scaling(train_env, scaling_for(train_env, source.scaling, env.id))
        try:
            model = build_agent(agent, train_env, seed=seed, device=resolve_device(device))
            mapping = map_weights(source.state_dict, model.policy)
        except RLTransferError as error:
            return CandidateScore(name, error=str(error).split(". Choose")[0].rstrip(".") + ".")
        if not mapping.copied:
            return CandidateScore(name, error=f"no layer of it fits an agent for {env.id}.")
        if hasattr(model, "q_net_target"):
            model.q_net_target.load_state_dict(model.q_net.state_dict())
        if finetune_steps:
            model.learn(finetune_steps)
        returns = _play(env, seed, episodes, lambda _space: model, source.scaling)
    finally:
        train_env.close()
    return CandidateScore(
        name, returns, copied=len(mapping.copied), reinitialised=list(mapping.reinitialised)
    )


def _init_args(algo: str) -> set[str]:
    import inspect

    from rltransfer.agents.algorithms import ALGORITHMS

    return set(inspect.signature(ALGORITHMS[algo].sb3_cls.__init__).parameters)
