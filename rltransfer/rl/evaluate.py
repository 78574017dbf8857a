"""``rltransfer evaluate``: a saved agent's return over N episodes (SB3's ``evaluate_policy``), on its own game by
default, optionally recorded to MP4 with gymnasium's ``RecordVideo``."""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from rltransfer.agents.builder import build_agent
from rltransfer.core.config import check_device, load_yaml
from rltransfer.core.device import resolve_device
from rltransfer.core.errors import ConfigError, TransferError
from rltransfer.envs.base import family_of
from rltransfer.rl.config import EnvConfig
from rltransfer.rl.environment import check_env, check_env_id, context_wrapper
from rltransfer.rl.normalization import apply_scaling, scaling_for
from rltransfer.rl.sources import load_source, source_agent_config

OFF_POLICY = ("dqn", "sac", "td3")


@dataclass
class Evaluation:
    """Returns and lengths of the episodes played, and the videos written."""

    agent: Path
    env_id: str
    returns: list[float]
    lengths: list[int]
    deterministic: bool
    videos: list[Path] = field(default_factory=list)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns))

    def summary(self) -> str:
        policy = "deterministic" if self.deterministic else "stochastic"
        lines = [
            f"{self.agent} on {self.env_id}: mean return {self.mean_return:.2f} +/- {self.std_return:.2f} over "
            f"{len(self.returns)} episodes ({policy} policy; mean length {np.mean(self.lengths):.0f})"
        ]
        if self.videos:
            lines.append(f"Videos: {', '.join(str(v) for v in self.videos)}")
        return "\n".join(lines)


def evaluate(
    agent: str | Path,
    *,
    env: str | None = None,
    episodes: int = 10,
    deterministic: bool = True,
    seed: int = 0,
    video_dir: str | Path | None = None,
    device: str = "auto",
    trust: bool = False,
) -> Evaluation:
    """Play `episodes` episodes with a saved agent (an rltransfer run directory or an SB3 ``.zip``, read
    weights-only) on `env` (default: the game of its run, with its context) and return the returns. With
    `video_dir`, every episode is recorded to an MP4 there (needs ``pip install "rltransfer[video]"``)."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {episodes}.")
    if not 0 <= seed <= 2**32 - 1:
        raise ConfigError(f"--seed must be an integer from 0 to 2**32 - 1 (4294967295), got {seed}.")
    try:
        check_device(device)
    except ValueError as error:
        raise ConfigError(f"--device {device!r}: {error}.") from None
    if video_dir is not None:
        _check_video_dir(Path(video_dir))
    source = load_source(agent, trust=trust)
    env_config = _env_of(source.path, env)
    vec_env = _make_env(env_config, seed, video_dir, episodes)
    vec_env = apply_scaling(vec_env, scaling_for(vec_env, source.scaling, env_config.id))
    agent_config = source_agent_config(source)
    if (
        agent_config.algo in OFF_POLICY
    ):  # no learning here: a one-transition buffer instead of the training one
        agent_config = agent_config.model_copy(
            update={
                "hyperparams": {**agent_config.hyperparams, "buffer_size": 1, "optimize_memory_usage": False}
            }
        )
    try:
        try:
            model = build_agent(agent_config, vec_env, seed=seed, device=resolve_device(device))
        except ConfigError as error:  # e.g. a DQN agent asked to play a game with continuous actions
            reason = str(error).split(". Choose")[0].rstrip(".")
            raise ConfigError(
                f"{source.path} is a {agent_config.algo.upper()} agent and cannot play {env_config.id} ({reason}). "
                "Evaluate it on the game it was trained on (leave out --env)."
            ) from None
        _load_weights(model, source.state_dict, source.path, env_config.id)
        # SB3 wrapped the env as the policy needs it (channel-first frames for a CNN)
        returns, lengths = evaluate_policy(
            model,
            model.get_env(),
            n_eval_episodes=episodes,
            deterministic=deterministic,
            return_episode_rewards=True,
        )
    finally:
        vec_env.close()  # RecordVideo writes the last video on close
    videos = []
    if video_dir is not None:  # gymnasium's RecordVideo names them by episode
        videos = [Path(video_dir) / f"rl-video-episode-{i}.mp4" for i in range(episodes)]
        videos = [path for path in videos if path.is_file()]
    return Evaluation(
        source.path,
        env_config.id,
        [float(r) for r in returns],
        [int(n) for n in lengths],
        deterministic,
        videos,
    )


def _check_video_dir(folder: Path) -> None:
    """A folder of its own for the videos: never a file, never mixed with another evaluation's episodes."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--video {folder} is a file; give a folder for the videos.")
    if folder.is_dir() and any(folder.glob("rl-video-episode-*.mp4")):
        raise ConfigError(
            f"--video {folder} already holds videos of an earlier evaluation; give another folder (or empty this "
            "one), so that the episodes of two agents are never mixed."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".rltransfer-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"Cannot write videos to {folder}: {error.strerror or type(error).__name__}. Give a writable folder."
        ) from None


def _env_of(path: Path, env: str | None) -> EnvConfig:
    """The game to play: `env` when given, else the one the agent's run was trained (or fine-tuned) on."""
    config = path.parent / "config.yaml"
    saved = load_yaml(config).get("env") if config.is_file() else None
    if env is None:
        if not isinstance(saved, dict) or "id" not in saved:
            raise ConfigError(
                f"{path} is not inside an rltransfer run directory, so its game is unknown: give it with "
                "--env ID (e.g. --env CartPole-v1)."
            )
        context = saved.get("context") or {}
        return EnvConfig(
            id=saved["id"], context=context, n_envs=1, observe_context=bool(saved.get("observe_context"))
        )
    same = isinstance(saved, dict) and saved.get("id") == env
    if not same:
        return EnvConfig(id=env, n_envs=1)
    return EnvConfig(
        id=env,
        context=saved.get("context") or {},
        n_envs=1,
        observe_context=bool(saved.get("observe_context")),
    )


def _make_env(env: EnvConfig, seed: int, video_dir: str | Path | None, episodes: int) -> VecEnv:
    check_env_id(env.id, "--env")
    family = family_of(env.id)
    # as the run's own evaluations play it (Atari: the game's real score, not clipped rewards)
    context = {**check_env(env, "env"), **(family.eval_context if family is not None else {})}
    drawing = context_wrapper(env)
    if video_dir is None:
        return make_vec_env(
            env.id, n_envs=1, seed=seed, env_kwargs=context, vec_env_cls=DummyVecEnv, **drawing
        )
    try:
        import moviepy  # noqa: F401  (RecordVideo's encoder)
    except ImportError:
        raise ConfigError(
            'Recording videos needs moviepy: pip install "rltransfer[video]" (or pip install moviepy).'
        ) from None

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame-drawn games render off-screen
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*Overwriting existing videos"
            )  # checked: no videos there
            return make_vec_env(
                env.id, n_envs=1, seed=seed, env_kwargs={**context, "render_mode": "rgb_array"},
                vec_env_cls=DummyVecEnv, wrapper_class=functools.partial(_recording, drawing=drawing),
                wrapper_kwargs={
                    "video_folder": str(video_dir), "episode_trigger": functools.partial(_within, episodes),
                    "disable_logger": True,
                },
            )  # fmt: skip
    except TypeError as error:
        raise ConfigError(f"{env.id} cannot render frames to record ({error}).") from None


def _recording(env: Any, drawing: dict[str, Any], **video: Any) -> Any:
    """The context drawn per episode (when the run drew one), then gymnasium's video recorder."""
    from gymnasium.wrappers import RecordVideo

    if drawing:
        env = drawing["wrapper_class"](env, **drawing["wrapper_kwargs"])
    return RecordVideo(env, **video)


def _within(episodes: int, episode: int) -> bool:
    """Record the episodes evaluated, not the one the vector env starts after the last of them."""
    return episode < episodes


def _load_weights(model: Any, state: dict[str, Any], path: Path, env_id: str) -> None:
    target = model.policy.state_dict()
    differ = [
        f"{key} is {list(tensor.shape)} in the agent, {list(target[key].shape)} for {env_id}"
        for key, tensor in state.items()
        if key in target and tuple(tensor.shape) != tuple(target[key].shape)
    ]
    missing = sorted(set(target) - set(state)) + sorted(set(state) - set(target))
    if differ or missing:
        detail = differ[0] if differ else f"tensor {missing[0]} is in one of them only"
        raise TransferError(
            f"The weights of {path} do not fit an agent for {env_id} ({detail}): it was trained on a game with "
            "other observation or action spaces. Evaluate it on its own game (leave out --env), or transfer it "
            "first (rltransfer transfer)."
        )
    model.policy.load_state_dict(state)
    if hasattr(model, "q_net_target"):
        model.q_net_target.load_state_dict(model.q_net.state_dict())
