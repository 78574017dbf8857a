"""Train an SB3 agent from a config: evaluation, early stopping, best model kept, TensorBoard, a run directory.

A run directory ``<log_root>/<name>/`` holds ``config.yaml`` (resolved), ``run.json`` (what happened, versions,
the command), ``best_model.zip`` (the run's result: best by evaluation), ``last_model.zip`` (where training ended),
``evaluations.json`` (the evaluation curve), ``progress.csv`` and the TensorBoard events.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage, is_vecenv_wrapped

from rltransfer.callbacks import (
    Checkpointing,
    EvaluateAndKeepBest,
    NumericalStop,
    RunInfo,
    UnfreezeAt,
    _finite,
    flat_hparams,
)
from rltransfer.checkpoints import CHECKPOINT_DIR, load_agent_checkpoint, read_agent_checkpoint
from rltransfer.config import RunConfig, TrainConfig, dump_config, load_config, parse_config
from rltransfer.environment import make_envs, reward_threshold
from rltransfer.errors import ConfigError, NumericalError, RLTransferError
from rltransfer.interrupt import Interrupted, stop_on_signals
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


def train(
    config: TrainConfig | str | Path | dict[str, Any] | None = None,
    *,
    progress_bar: bool = True,
    resume: str | Path | None = None,
) -> RunResult:
    """Train a source agent from scratch as the config says and return the run's result. ``resume`` continues
    an interrupted run from its directory (with the config saved there)."""
    from rltransfer.agents import build_agent
    from rltransfer.environment import resolve_device

    if resume is not None:
        config = resume_config(resume, TrainConfig)
    config = coerce_config(config, TrainConfig)
    assert isinstance(config, TrainConfig)
    train_env, eval_env = make_envs(config.env, config.seed)
    model = build_agent(config.agent, train_env, seed=config.seed, device=resolve_device(config.device))
    run_dir = Path(resume) if resume is not None else prepare_run_dir(config.log_root, config.name)
    return run_training(
        model, config, run_dir, eval_env, kind="train", progress_bar=progress_bar, resume=resume is not None
    )


def resume_config(run_dir: str | Path, model: type[RunConfig]) -> RunConfig:
    """The config saved in an interrupted run's directory, checked to be of the kind being resumed."""
    run_dir = Path(run_dir)
    kind = "train" if model is TrainConfig else "transfer"
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(
            f"{run_dir} is not an rltransfer run directory (no run.json). Give the run's folder."
        ) from None
    except ValueError as error:
        raise ConfigError(f"{run_dir / 'run.json'} is truncated or damaged ({error}).") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{run_dir / 'run.json'} is damaged (not a JSON object).")
    if record.get("kind") != kind:
        raise ConfigError(
            f"{run_dir} is a `{record.get('kind')}` run; resume it with `rltransfer {record.get('kind')} --resume`."
        )
    if record.get("status") == "finished":
        raise ConfigError(f"{run_dir} already finished; there is nothing to resume.")
    return load_config(run_dir / "config.yaml", model)


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
    resume: bool = False,
) -> RunResult:
    """Learn for the config's budget with evaluation, early stopping and logging; write the run's files.

    Checkpoints (``checkpoint/``) are written after every evaluation; Ctrl-C or SIGTERM writes one and raises
    :class:`Interrupted`; ``resume`` continues from the run directory's checkpoint. A NaN or infinite parameter
    stops the run with a :class:`NumericalError`, keeping the last good checkpoint."""
    checkpoint = read_agent_checkpoint(run_dir) if resume else None
    config_yaml = dump_config(config)
    if not resume:
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
    if checkpoint is not None:
        record["resumed_from"] = checkpoint["num_timesteps"]
    write_json(run_dir / "run.json", record)

    if checkpoint is not None and (run_dir / "progress.csv").exists():
        # SB3's CSV writer starts its file afresh: keep the part before the resume beside it
        part = 1
        while (run_dir / f"progress.before-resume-{part}.csv").exists():
            part += 1
        (run_dir / "progress.csv").rename(run_dir / f"progress.before-resume-{part}.csv")
    model.set_logger(configure(str(run_dir), ["tensorboard", "csv"]))
    n_envs = model.get_env().num_envs  # type: ignore[union-attr]
    # SB3 transposed channel-last training frames (Atari); evaluate on the same layout
    transposed = is_vecenv_wrapped(model.get_env(), VecTransposeImage)
    if transposed and not is_vecenv_wrapped(eval_env, VecTransposeImage):
        eval_env = VecTransposeImage(eval_env)
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
    checkpointing = Checkpointing(run_dir, evaluation, callbacks or [])
    remaining = config.budget
    if checkpoint is not None:
        try:
            _restore(model, checkpoint, evaluation, callbacks or [])
        except (KeyError, ValueError, RuntimeError) as error:
            raise ConfigError(
                f"The checkpoint in {run_dir / CHECKPOINT_DIR} does not fit the agent built from {run_dir / 'config.yaml'} "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); was the config edited? Start the run "
                "again without --resume."
            ) from None
        remaining = max(1, config.budget - model.num_timesteps)
    started = time.perf_counter()
    try:
        with stop_on_signals():
            model.learn(
                total_timesteps=remaining,
                callback=[info, *(callbacks or []), evaluation, checkpointing],
                progress_bar=progress_bar,
                reset_num_timesteps=checkpoint is None,
            )
            if checkpointing.signal is not None:
                checkpointing.save()
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        brief = str(error).splitlines()[0][:300] if str(error) else ""
        record.update(
            status="interrupted" if interrupted else "failed", error=f"{type(error).__name__}: {brief}"
        )
        record.update(timesteps=int(model.num_timesteps))
        write_json(run_dir / "run.json", record)
        bad = _finite(model.policy)
        if isinstance(error, NumericalStop) or (bad is not None and not interrupted):
            checkpointing.numerical = checkpointing.numerical or (
                f"parameter {bad} became NaN or infinite by step {model.num_timesteps:,}"
            )
        elif isinstance(error, (TypeError, ValueError)) and not isinstance(error, RLTransferError):
            raise ConfigError(
                f"Training stopped at step {model.num_timesteps:,} with {type(error).__name__}: {brief}. This usually "
                "comes from a setting of the wrong type or range in `agent.hyperparams`; check it in the config."
            ) from error
        else:
            raise
    finally:
        model.get_env().close()  # type: ignore[union-attr]
        eval_env.close()
        model.logger.close()
    if checkpointing.numerical is not None:
        lr = model.lr_schedule(model._current_progress_remaining)
        kept = (
            f"the last good checkpoint (step {checkpointing.saved_at:,}) is in {run_dir / CHECKPOINT_DIR}"
            if checkpointing.saved_at is not None
            else "no checkpoint was saved before it"
        )
        record.update(status="failed", error=checkpointing.numerical, timesteps=int(model.num_timesteps))
        write_json(run_dir / "run.json", record)
        raise NumericalError(
            f"Training stopped: {checkpointing.numerical}. Likely causes: a learning rate too high for this agent "
            f"(now {lr:g}; lower `agent.optimizer.lr`) or rewards on a large scale (rescale them). The best model so "
            f"far is {run_dir / 'best_model.zip'}; {kept}."
        )
    if checkpointing.signal is not None:
        record.update(status="interrupted", timesteps=int(model.num_timesteps), signal=checkpointing.signal)
        write_json(run_dir / "run.json", record)
        raise Interrupted(checkpointing.signal, run_dir, kind, f" at step {model.num_timesteps:,}")
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
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)  # finished: nothing left to resume
    return result


def _restore(
    model: BaseAlgorithm,
    checkpoint: dict[str, Any],
    evaluation: EvaluateAndKeepBest,
    extra: list[BaseCallback],
) -> None:
    """A freshly built (and frozen) agent continues from the checkpoint; a second fine-tuning phase that had
    begun is begun again first, so the optimizers have the same parameters as when they were saved."""
    from rltransfer.sb3 import unfreeze_agent

    states = checkpoint["callbacks"]
    for callback, unfrozen_at in zip(extra, states.get("unfrozen_at", []), strict=False):
        if unfrozen_at is not None and isinstance(callback, UnfreezeAt):
            unfreeze_agent(model, callback.names)
            callback.unfrozen_at = unfrozen_at
    load_agent_checkpoint(model, checkpoint)
    evaluation.load_state(states["evaluation"])
    print(f"Resuming at step {model.num_timesteps:,} of the run's budget.", flush=True)
