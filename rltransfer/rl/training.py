"""Train an SB3 agent from a config: evaluation, early stopping, best model kept, TensorBoard, a run directory.

What the run directory holds is described in :mod:`rltransfer.core.record`. Checkpoints (``checkpoint/``) are
written after every evaluation; Ctrl-C or SIGTERM writes one and raises :class:`Interrupted`, and ``resume``
continues from it. A NaN or infinite parameter stops the run with a :class:`NumericalError`, keeping the last
good checkpoint.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage, is_vecenv_wrapped

from rltransfer.agents.algorithms import ALGORITHMS
from rltransfer.agents.builder import build_agent
from rltransfer.agents.freezing import save_model, unfreeze_agent
from rltransfer.core.config import coerce_config, dump_config, load_config
from rltransfer.core.device import resolve_device
from rltransfer.core.errors import ConfigError, NumericalError, RLTransferError, StorageError
from rltransfer.core.interrupt import Interrupted, stop_on_signals
from rltransfer.core.io import (
    WRITE_FAULTS,
    atomic_path,
    cannot_write,
    lock_run_dir,
    prepare_run_dir,
    release_run_dir,
    versions,
    write_text,
)
from rltransfer.core.layers import count_parameters
from rltransfer.core.record import RunRecord, restart_if_never_checkpointed
from rltransfer.rl.callbacks import (
    Checkpointing,
    EvaluateAndKeepBest,
    NumericalStop,
    OnEvaluation,
    RunInfo,
    UnfreezeAt,
    flat_hparams,
    nonfinite_parameter,
)
from rltransfer.rl.checkpoints import load_agent_checkpoint, read_agent_checkpoint
from rltransfer.rl.config import RunConfig, TrainConfig
from rltransfer.rl.environment import EVAL_SEED_OFFSET, evaluation_env_maker, make_envs, reward_threshold
from rltransfer.rl.episodes import EvaluationEpisodes
from rltransfer.rl.episodes import side_by_side as side_by_side_envs


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
    best_untrained: bool = False
    """Training from scratch whose best evaluation came before the agent's first update: keep-best kept the
    untrained network (PPO and A2C update once per rollout, so eval.every below one rollout evaluates it)."""

    def load_best(self, device: str = "auto") -> BaseAlgorithm:
        """Load the best model with plain SB3."""
        return ALGORITHMS[self.algo].sb3_cls.load(self.best_model, device=device)

    def summary(self) -> str:
        best_at = f" at step {self.best_step:,}" if self.best_step is not None else ""
        untrained = (
            f"\nNote: the best model is the untrained network: its best evaluation{best_at} came before the "
            "agent's first update, so it holds the weights the run started with (PPO and A2C update once per rollout "
            "of n_steps x n_envs steps). Set eval.every to at least one rollout, or lower agent.hyperparams.n_steps, "
            "for evaluations of trained networks."
            if self.best_untrained
            else ""
        )
        return (
            f"{self.run_dir}: best evaluation return {self.best_mean_return:.1f}{best_at} after "
            f"{self.timesteps:,} steps in {self.seconds:.0f} s ({self.stop_reason}); best model: {self.best_model}"
            + untrained
        )


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
    on_evaluation: OnEvaluation | None = None,
) -> RunResult:
    """Train a source agent from scratch as the config says and return the run's result. ``resume`` continues
    an interrupted run from its directory (with the config saved there). ``on_evaluation`` is called with the
    curve after each evaluation; a reason it returns stops the run there (a pruned tuning trial)."""
    if resume is not None:
        lock_run_dir(Path(resume))
        config = resume_config(resume, TrainConfig)
    config = coerce_config(config, TrainConfig)
    train_env, eval_env = make_envs(config.env, config.seed)
    model = build_agent(config.agent, train_env, seed=config.seed, device=resolve_device(config.device))
    run_dir = Path(resume) if resume is not None else prepare_run_dir(config.log_root, config.name)
    if resume is not None and restart_if_never_checkpointed(run_dir):
        resume = None
    try:
        return run_training(
            model,
            config,
            run_dir,
            eval_env,
            kind="train",
            progress_bar=progress_bar,
            resume=resume is not None,
            on_evaluation=on_evaluation,
        )
    finally:
        release_run_dir(run_dir)


def resume_config(run_dir: str | Path, model: type[RunConfig]) -> RunConfig:
    """The config saved in an interrupted run's directory, checked to be of the kind being resumed."""
    record = RunRecord.resumable(run_dir, "train" if model is TrainConfig else "transfer")
    return load_config(record.config_path, model)


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
    on_finish: Callable[[], dict[str, Any]] | None = None,
    on_evaluation: OnEvaluation | None = None,
) -> RunResult:
    """Learn for the config's budget with evaluation, early stopping and logging; write the run's files.

    ``run.json`` is written when the run starts and once more when it ends (finished, failed or interrupted);
    ``on_finish`` adds the caller's own results to that last record."""
    checkpoint = read_agent_checkpoint(run_dir) if resume else None
    _warn_if_no_update(model, config)
    config_yaml = dump_config(config)
    if not resume:
        write_text(run_dir / "config.yaml", config_yaml)
    record = _start_record(model, config, run_dir, kind, metadata, checkpoint)
    _open_logger(model, run_dir, resumed=checkpoint is not None)
    evaluation = _evaluation(model, config, run_dir, eval_env, kind)
    evaluation.on_evaluation = on_evaluation
    extra = callbacks or []
    checkpointing = Checkpointing(run_dir, evaluation, extra, config.checkpoint.buffer_seconds)
    remaining = config.budget
    if checkpoint is not None:
        remaining = _resume_from(model, checkpoint, evaluation, extra, config, run_dir)
    info = RunInfo(config_yaml, flat_hparams(config.model_dump(mode="json")), texts)
    started = time.perf_counter()
    _learn(
        model,
        remaining,
        [info, *extra, evaluation, checkpointing],
        checkpointing,
        record,
        kind,
        progress_bar=progress_bar,
        fresh=checkpoint is None,
    )
    _stop_if_unfinished(model, checkpointing, record, kind)
    return _finish(model, record, evaluation, time.perf_counter() - started, on_finish)


def _warn_if_no_update(model: BaseAlgorithm, config: RunConfig) -> None:
    """PPO / A2C learn once per rollout: a budget below one rollout is spent before the first update."""
    steps = getattr(model, "n_steps", None)
    rollout = steps * model.n_envs if isinstance(steps, int) else 0
    if rollout > config.budget:
        print(
            f"Warning: one rollout is {rollout:,} steps (n_steps {steps} x {model.n_envs} envs) but the budget is "
            f"{config.budget:,}: SB3 collects the whole rollout before its first update, so the run takes "
            f"{rollout:,} steps and every evaluation sees the untrained network. Lower agent.hyperparams.n_steps "
            "or env.n_envs, or raise the budget.",
            file=sys.stderr,
            flush=True,
        )


def _start_record(
    model: BaseAlgorithm,
    config: RunConfig,
    run_dir: Path,
    kind: str,
    metadata: dict[str, Any] | None,
    checkpoint: dict[str, Any] | None,
) -> RunRecord:
    algo = getattr(getattr(config, "agent", None), "algo", None) or (metadata or {}).get("algo", "ppo")
    record = RunRecord(run_dir)
    values: dict[str, Any] = {
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
        values["resumed_from"] = checkpoint["num_timesteps"]
    record.update(**values)
    return record


def _open_logger(model: BaseAlgorithm, run_dir: Path, *, resumed: bool) -> None:
    """SB3's logger to TensorBoard and CSV; on resume, the CSV written before is kept beside the new one (SB3's
    CSV writer starts its file afresh)."""
    if resumed and (run_dir / "progress.csv").exists():
        part = 1
        while (run_dir / f"progress.before-resume-{part}.csv").exists():
            part += 1
        (run_dir / "progress.csv").rename(run_dir / f"progress.before-resume-{part}.csv")
    model.set_logger(configure(str(run_dir), ["tensorboard", "csv"]))


def _evaluation(
    model: BaseAlgorithm, config: RunConfig, run_dir: Path, eval_env: VecEnv, kind: str
) -> EvaluateAndKeepBest:
    n_envs = model.get_env().num_envs  # type: ignore[union-attr]
    # SB3 transposed channel-last training frames (Atari); evaluate on the same layout
    transposed = is_vecenv_wrapped(model.get_env(), VecTransposeImage)
    if transposed and not is_vecenv_wrapped(eval_env, VecTransposeImage):
        eval_env = VecTransposeImage(eval_env)
    side_by_side = 1
    if not transposed:
        side_by_side = side_by_side_envs(
            config.env.id,
            config.env.context,
            config.eval.envs,
            config.eval.episodes,
            deterministic=config.eval.deterministic,
            discrete_actions=isinstance(model.action_space, (spaces.Discrete, spaces.MultiDiscrete)),
        )
    played = EvaluationEpisodes(
        eval_env,
        episodes=config.eval.episodes,
        deterministic=config.eval.deterministic,
        side_by_side=side_by_side,
        make_env=evaluation_env_maker(config.env) if side_by_side > 1 else None,
        seed=config.seed + EVAL_SEED_OFFSET,
    )
    return EvaluateAndKeepBest(
        eval_env,
        run_dir,
        every=max(1, config.eval.every // n_envs),
        episodes=config.eval.episodes,
        deterministic=config.eval.deterministic,
        patience=config.eval.patience,
        min_evals=config.eval.min_evals,
        threshold=threshold_of(config),
        initial_is_candidate=kind != "train",
        played=played,
    )


def _resume_from(
    model: BaseAlgorithm,
    checkpoint: dict[str, Any],
    evaluation: EvaluateAndKeepBest,
    extra: list[BaseCallback],
    config: RunConfig,
    run_dir: Path,
) -> int:
    """Put the checkpoint into the freshly built agent; the steps left of the budget."""
    try:
        _restore(model, checkpoint, evaluation, extra)
    except (KeyError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"The checkpoint in {checkpoint['folder']} does not fit the agent built from {run_dir / 'config.yaml'} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); was the config edited? Start the run "
            "again without --resume."
        ) from None
    return max(1, config.budget - model.num_timesteps)


def _restore(
    model: BaseAlgorithm,
    checkpoint: dict[str, Any],
    evaluation: EvaluateAndKeepBest,
    extra: list[BaseCallback],
) -> None:
    """A freshly built (and frozen) agent continues from the checkpoint; a second fine-tuning phase that had
    begun is begun again first, so the optimizers have the same parameters as when they were saved."""
    states = checkpoint["callbacks"]
    for callback, unfrozen_at in zip(extra, states.get("unfrozen_at", []), strict=False):
        if unfrozen_at is not None and isinstance(callback, UnfreezeAt):
            unfreeze_agent(model, callback.names)
            callback.unfrozen_at = unfrozen_at
    load_agent_checkpoint(model, checkpoint)
    evaluation.load_state(states["evaluation"])
    print(f"Resuming at step {model.num_timesteps:,} of the run's budget.", flush=True)


def _learn(
    model: BaseAlgorithm,
    steps: int,
    callbacks: list[BaseCallback],
    checkpointing: Checkpointing,
    record: RunRecord,
    kind: str,
    *,
    progress_bar: bool,
    fresh: bool,
) -> None:
    """SB3's ``learn`` under the signal handlers. A failure is recorded (a parameter that became NaN is left to
    :func:`_stop_if_unfinished`); a wrong hyperparameter type becomes a ConfigError."""
    evaluation = checkpointing.evaluation
    try:
        with stop_on_signals(resume=(record.run_dir, kind)):
            model.learn(
                total_timesteps=steps,
                callback=callbacks,
                progress_bar=progress_bar,
                reset_num_timesteps=fresh,
            )
            if checkpointing.signal is not None:
                checkpointing.save(stopping=True)
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        bad = nonfinite_parameter(model.policy)
        if isinstance(error, NumericalStop) or (bad is not None and not interrupted):
            checkpointing.numerical = checkpointing.numerical or (
                f"parameter {bad} became NaN or infinite by step {model.num_timesteps:,}"
            )
            return
        brief = str(error).splitlines()[0][:300] if str(error) else ""
        with suppress(StorageError):  # a run directory that cannot be written: the error raised below says so
            record.update(
                status="interrupted" if interrupted else "failed",
                error=f"{type(error).__name__}: {brief}",
                timesteps=int(model.num_timesteps),
            )
        if isinstance(error, OSError) and error.errno in WRITE_FAULTS:  # e.g. SB3's own logs on a full disk
            raise cannot_write(Path(error.filename or record.run_dir), error) from error
        if isinstance(error, (TypeError, ValueError)) and not isinstance(error, RLTransferError):
            raise ConfigError(
                f"Training stopped at step {model.num_timesteps:,} with {type(error).__name__}: {brief}. This usually "
                "comes from a setting of the wrong type or range in `agent.hyperparams`; check it in the config."
            ) from error
        raise
    finally:
        model.get_env().close()  # type: ignore[union-attr]
        evaluation.eval_env.close()
        evaluation.played.close()
        model.logger.close()


def _stop_if_unfinished(
    model: BaseAlgorithm, checkpointing: Checkpointing, record: RunRecord, kind: str
) -> None:
    """Record and raise a numerical fault or a stop on a signal (both leave a checkpoint to resume from)."""
    run_dir = record.run_dir
    if checkpointing.numerical is not None:
        lr = model.lr_schedule(model._current_progress_remaining)
        kept = (
            f"the last good checkpoint (step {checkpointing.saved_at:,}) is in {record.checkpoint_dir}"
            if checkpointing.saved_at is not None
            else "no checkpoint was saved before it"
        )
        record.update(status="failed", error=checkpointing.numerical, timesteps=int(model.num_timesteps))
        best = (
            f"The best model so far is {record.best_model}"
            if record.best_model.exists()
            else "No model was saved before it (no evaluation had finished)"
        )
        raise NumericalError(
            f"Training stopped: {checkpointing.numerical}. Likely causes: a learning rate too high for this agent "
            f"(now {lr:g}; lower `agent.optimizer.lr`) or rewards on a large scale (rescale them). {best}; {kept}."
        )
    if checkpointing.signal is not None:
        record.update(status="interrupted", timesteps=int(model.num_timesteps), signal=checkpointing.signal)
        raise Interrupted(checkpointing.signal, run_dir, kind, f" at step {model.num_timesteps:,}")


def _finish(
    model: BaseAlgorithm,
    record: RunRecord,
    evaluation: EvaluateAndKeepBest,
    seconds: float,
    on_finish: Callable[[], dict[str, Any]] | None,
) -> RunResult:
    last_model = save_model(model, record.last_model)
    trainable, frozen = count_parameters(model.policy)
    result = RunResult(
        run_dir=record.run_dir,
        algo=record.get("algo"),
        best_model=record.best_model,
        last_model=last_model,
        best_mean_return=float(evaluation.best_mean_reward),
        best_step=evaluation.save_best.best_step,
        timesteps=int(model.num_timesteps),
        curve=evaluation.curve,
        stop_reason=evaluation.stop_reason or "budget spent",
        seconds=seconds,
        best_untrained=not evaluation.initial_is_candidate and evaluation.save_best.best_updates == 0,
    )
    record.update(
        status="finished",
        best_mean_return=result.best_mean_return,
        best_step=result.best_step,
        timesteps=result.timesteps,
        stop_reason=result.stop_reason,
        seconds=round(seconds, 2),
        best_untrained=result.best_untrained,
        parameters={"trainable": trainable, "frozen": frozen},
        **(on_finish() if on_finish is not None else {}),
    )
    shutil.rmtree(record.checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    write_curve_png(record.run_dir / "curves.png", result.curve, evaluation.save_best.threshold)
    return result


def write_curve_png(path: Path, curve: list[dict[str, float]], threshold: float | None) -> None:
    """The evaluation curve as a PNG beside evaluations.json (with the threshold, when there is one)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    axis.plot([p["step"] for p in curve], [p["mean_return"] for p in curve], marker="o", markersize=3)
    if threshold is not None:
        axis.axhline(threshold, color="gray", linestyle=":", linewidth=1, label=f"threshold {threshold:g}")
        axis.legend(fontsize=8)
    axis.set_xlabel("environment steps")
    axis.set_ylabel("evaluation return")
    axis.set_title(path.parent.name, fontsize=10)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100, format="png")
