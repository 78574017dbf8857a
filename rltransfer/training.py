"""Train an SB3 agent from a config: evaluation, early stopping, best model kept, TensorBoard, a run directory.

A run directory ``<log_root>/<name>/`` holds ``config.yaml`` (resolved), ``run.json`` (what happened, versions,
the command), ``best_model.zip`` (the run's result: best by evaluation), ``last_model.zip`` (where training ended),
``evaluations.json`` (the evaluation curve), ``progress.csv`` and the TensorBoard events.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv

from rltransfer.callbacks import EvaluateAndKeepBest, RunInfo, flat_hparams
from rltransfer.config import RunConfig, TrainConfig, dump_config, load_config, parse_config
from rltransfer.environment import make_envs, reward_threshold
from rltransfer.errors import ConfigError
from rltransfer.io import prepare_run_dir, save_model, versions, write_json, write_text
from rltransfer.layers import count_parameters


@dataclass
class RunResult:
    """What a training or transfer run produced; ``best_model`` is the run's result."""

    run_dir: Path
    algo: str
    best_model: Path
    last_model: Path
    best_mean_return: float
    best_step: int | None
    timesteps: int
    curve: list[dict[str, float]]
    stop_reason: str
    seconds: float

    def load_best(self, device: str = "auto") -> BaseAlgorithm:
        """Load the best model with plain SB3."""
        from rltransfer.agents import ALGORITHMS

        return ALGORITHMS[self.algo].sb3_cls.load(self.best_model, device=device)

    def summary(self) -> str:
        best_at = f" at step {self.best_step:,}" if self.best_step is not None else ""
        return (
            f"{self.run_dir}: best evaluation return {self.best_mean_return:.1f}{best_at} after "
            f"{self.timesteps:,} steps in {self.seconds:.0f} s ({self.stop_reason}); best model: {self.best_model}"
        )


def coerce_config(config: RunConfig | str | Path | dict[str, Any], model: type[RunConfig]) -> RunConfig:
    """Accept a config object, a YAML path or a mapping."""
    if isinstance(config, model):
        return config
    if isinstance(config, dict):
        return parse_config(config, model)
    if isinstance(config, (str, Path)):
        return load_config(config, model)
    raise TypeError(f"expected a {model.__name__}, a YAML path or a mapping, got {type(config).__name__}")


def threshold_of(config: RunConfig) -> float | None:
    """The return at which evaluation stops training (``env`` means the env's reward threshold)."""
    if config.eval.threshold == "env":
        return reward_threshold(config.env.id)
    return config.eval.threshold


def train(config: TrainConfig | str | Path | dict[str, Any], *, progress_bar: bool = True) -> RunResult:
    """Train a source agent from scratch as the config says and return the run's result."""
    from rltransfer.agents import build_agent
    from rltransfer.environment import resolve_device

    config = coerce_config(config, TrainConfig)
    assert isinstance(config, TrainConfig)
    train_env, eval_env = make_envs(config.env, config.seed)
    model = build_agent(config.agent, train_env, seed=config.seed, device=resolve_device(config.device))
    run_dir = prepare_run_dir(config.log_root, config.name)
    return run_training(model, config, run_dir, eval_env, kind="train", progress_bar=progress_bar)


def run_training(
    model: BaseAlgorithm,
    config: RunConfig,
    run_dir: Path,
    eval_env: VecEnv,
    *,
    kind: str,
    progress_bar: bool = True,
    metadata: dict[str, Any] | None = None,
    texts: dict[str, str] | None = None,
    callbacks: list[BaseCallback] | None = None,
) -> RunResult:
    """Learn for the config's budget with evaluation, early stopping and logging; write the run's files."""
    config_yaml = dump_config(config)
    write_text(run_dir / "config.yaml", config_yaml)
    algo = getattr(getattr(config, "agent", None), "algo", None) or (metadata or {}).get("algo", "ppo")
    record: dict[str, Any] = {
        "kind": kind,
        "status": "running",
        "algo": algo,
        "env": config.env.id,
        "seed": config.seed,
        "device": str(model.device),
        "command": sys.argv,
        "versions": versions(),
        **(metadata or {}),
    }
    write_json(run_dir / "run.json", record)

    model.set_logger(configure(str(run_dir), ["tensorboard", "csv"]))
    n_envs = model.get_env().num_envs  # type: ignore[union-attr]
    evaluation = EvaluateAndKeepBest(
        eval_env,
        run_dir,
        every=max(1, config.eval.every // n_envs),
        episodes=config.eval.episodes,
        deterministic=config.eval.deterministic,
        patience=config.eval.patience,
        min_evals=config.eval.min_evals,
        threshold=threshold_of(config),
        initial_is_candidate=kind != "train",
    )
    info = RunInfo(config_yaml, flat_hparams(config.model_dump(mode="json")), texts)
    started = time.perf_counter()
    try:
        model.learn(
            total_timesteps=config.budget,
            callback=[info, *(callbacks or []), evaluation],
            progress_bar=progress_bar,
        )
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        record.update(
            status="interrupted" if interrupted else "failed", error=f"{type(error).__name__}: {error}"
        )
        record.update(timesteps=int(model.num_timesteps))
        write_json(run_dir / "run.json", record)
        if isinstance(error, (TypeError, ValueError)):
            raise ConfigError(
                f"Training stopped at step {model.num_timesteps:,} with {type(error).__name__}: {error}. This usually "
                "comes from a setting of the wrong type or range in `agent.hyperparams`; check it in the config."
            ) from error
        raise
    finally:
        model.get_env().close()  # type: ignore[union-attr]
        eval_env.close()
        model.logger.close()
    seconds = time.perf_counter() - started
    last_model = save_model(model, run_dir / "last_model.zip")
    trainable, frozen = count_parameters(model.policy)
    result = RunResult(
        run_dir=run_dir,
        algo=algo,
        best_model=run_dir / "best_model.zip",
        last_model=last_model,
        best_mean_return=float(evaluation.best_mean_reward),
        best_step=evaluation.save_best.best_step,
        timesteps=int(model.num_timesteps),
        curve=evaluation.curve,
        stop_reason=evaluation.stop_reason or "budget spent",
        seconds=seconds,
    )
    record.update(
        status="finished",
        best_mean_return=result.best_mean_return,
        best_step=result.best_step,
        timesteps=result.timesteps,
        stop_reason=result.stop_reason,
        seconds=round(seconds, 2),
        parameters={"trainable": trainable, "frozen": frozen},
    )
    write_json(run_dir / "run.json", record)
    return result
