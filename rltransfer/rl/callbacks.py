"""SB3 callbacks: evaluation with early stopping that keeps the best model, and run information for TensorBoard."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback, StopTrainingOnNoModelImprovement
from stable_baselines3.common.logger import HParam, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

from rltransfer.agents.freezing import save_model, unfreeze_agent
from rltransfer.core.interrupt import stop_requested
from rltransfer.core.io import write_json
from rltransfer.core.layers import count_parameters
from rltransfer.rl.checkpoints import save_agent_checkpoint
from rltransfer.rl.episodes import EvaluationEpisodes


class SaveBest(BaseCallback):
    """Called by :class:`EvaluateAndKeepBest` on each new best: save it atomically; stop at the threshold."""

    def __init__(self, path: Path, threshold: float | None) -> None:
        super().__init__()
        self.path = path
        self.threshold = threshold
        self.best_step: int | None = None
        self.best_updates: int | None = None
        """The agent's gradient updates when the best was saved (0: the best is the untrained network)."""
        self.reached_threshold_at: int | None = None

    def _on_step(self) -> bool:
        assert self.parent is not None
        save_model(self.model, self.path)
        self.best_step = self.num_timesteps
        self.best_updates = getattr(self.model, "_n_updates", None)
        # the step-0 evaluation never stops training: a run always trains for at least one evaluation period
        if (
            self.threshold is not None
            and self.num_timesteps > 0
            and self.parent.best_mean_reward >= self.threshold
        ):
            self.reached_threshold_at = self.num_timesteps
            return False
        return True


OnEvaluation = Callable[[list[dict[str, float]]], "str | None"]
"""Called after each evaluation with the curve so far (``{step, mean_return}`` points); returning a reason stops
the run there (e.g. a tuning trial that is pruned), None lets it go on."""


class EvaluateAndKeepBest(EvalCallback):
    """SB3's EvalCallback, evaluating at step 0 too, saving the best model atomically and recording the curve.

    Early stopping is SB3's ``StopTrainingOnNoModelImprovement`` after every evaluation; a threshold stops
    training as soon as the mean evaluation return reaches it (never at step 0). A later evaluation that ties
    with the best replaces the kept model. With ``initial_is_candidate=False`` (training from scratch) the step-0
    evaluation only starts the curve: an untrained network is never the run's result. The curve (step, mean
    return) is kept in ``curve`` and written to ``evaluations.json`` after each evaluation. ``played`` plays
    the episodes (one after another on `eval_env` unless given, e.g. side by side).
    """

    def __init__(
        self,
        eval_env: VecEnv,
        run_dir: Path,
        *,
        every: int,
        episodes: int,
        deterministic: bool,
        patience: int | None,
        min_evals: int,
        threshold: float | None,
        initial_is_candidate: bool = True,
        on_evaluation: OnEvaluation | None = None,
        played: EvaluationEpisodes | None = None,
    ) -> None:
        self.save_best = SaveBest(run_dir / "best_model.zip", threshold)
        stop = None
        if patience is not None:
            stop = StopTrainingOnNoModelImprovement(
                max_no_improvement_evals=patience, min_evals=min_evals, verbose=0
            )
        super().__init__(
            eval_env,
            callback_on_new_best=self.save_best,
            callback_after_eval=stop,
            n_eval_episodes=episodes,
            eval_freq=every,
            log_path=None,
            best_model_save_path=None,
            deterministic=deterministic,
            verbose=0,
            warn=False,
        )
        self.run_dir = run_dir
        self.initial_is_candidate = initial_is_candidate
        self.curve: list[dict[str, float]] = []
        self.stop_reason: str | None = None
        self.on_evaluation = on_evaluation
        self.played = played or EvaluationEpisodes(eval_env, episodes=episodes, deterministic=deterministic)
        self._continue = True

    def state(self) -> dict[str, Any]:
        """What early stopping and the kept best must remember across a resume."""
        stop = self.callback
        return {
            "n_calls": self.n_calls,
            "best_mean_reward": float(self.best_mean_reward),
            "last_mean_reward": float(self.last_mean_reward),
            "curve": self.curve,
            "best_step": self.save_best.best_step,
            "best_updates": self.save_best.best_updates,
            "stop_calls": stop.n_calls if stop is not None else 0,
            "no_improvement_evals": getattr(stop, "no_improvement_evals", 0),
            "last_best_mean_reward": float(getattr(stop, "last_best_mean_reward", -np.inf)),
            "episodes": self.played.state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`: the step-0 evaluation is not repeated."""
        self.resumed = True
        self.n_calls = state["n_calls"]
        self.best_mean_reward, self.last_mean_reward = state["best_mean_reward"], state["last_mean_reward"]
        self.curve = state["curve"]
        self.save_best.best_step = state["best_step"]
        self.save_best.best_updates = state.get("best_updates")
        if self.callback is not None:
            self.callback.n_calls = state["stop_calls"]
            self.callback.no_improvement_evals = state["no_improvement_evals"]
            self.callback.last_best_mean_reward = state["last_best_mean_reward"]
        self.played.load_state(state.get("episodes"))

    def _init_callback(self) -> None:
        # a single-process evaluation env beside subprocess training envs is intended
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Training and eval env are not of the same type")
            super()._init_callback()

    def _on_training_start(self) -> None:
        if getattr(self, "resumed", False):
            return
        # n_calls is 0 here, so the step-0 evaluation runs: the zero-shot point, which may be the best; an
        # untrained network (training from scratch) only starts the curve and is never kept as the result
        self._continue = self._evaluate_now(candidate=self.initial_is_candidate)

    def _on_step(self) -> bool:
        if not self._continue:
            return False
        self._continue = self._evaluate_now()
        return self._continue

    def _evaluate_now(self, candidate: bool = True) -> bool:
        """SB3's EvalCallback step (sync the observation scaling, play, log, keep the best, run the stopping
        callback), with the episodes played by :class:`EvaluationEpisodes`."""
        if not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0):
            return True
        if self.model.get_vec_normalize_env() is not None:
            sync_envs_normalization(self.training_env, self.eval_env)
        self._is_success_buffer = []
        returns, lengths = self.played.play(self.model, self._log_success_callback)
        mean_return = float(np.mean(returns))
        self.last_mean_reward = mean_return
        self.logger.record("eval/mean_reward", mean_return)
        self.logger.record("eval/mean_ep_length", float(np.mean(lengths)))
        if self._is_success_buffer:
            self.logger.record("eval/success_rate", float(np.mean(self._is_success_buffer)))
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)
        self.curve.append({"step": self.num_timesteps, "mean_return": mean_return})
        write_json(self.run_dir / "evaluations.json", self.curve)
        keep_going = True
        if candidate:
            # a tie with the best goes to the later model (same score, more training); SB3's patience still
            # counts it as no improvement
            if mean_return >= self.best_mean_reward:
                self.best_mean_reward = mean_return
                keep_going = self.save_best.on_step()
            if self.callback is not None:
                keep_going = keep_going and self._on_event()
        keep_going = self._ask_listener() and keep_going
        if not keep_going and self.stop_reason is None:
            if self.save_best.reached_threshold_at is not None:
                self.stop_reason = f"threshold reached at step {self.save_best.reached_threshold_at}"
            else:
                self.stop_reason = f"no improvement in {self.callback.max_no_improvement_evals} evaluations"  # type: ignore[union-attr]
        return keep_going

    def _ask_listener(self) -> bool:
        """Hand the curve to ``on_evaluation``; a reason it returns stops the run and becomes its stop reason."""
        if self.on_evaluation is None:
            return True
        reason = self.on_evaluation(list(self.curve))
        if reason is None:
            return True
        self.stop_reason = str(reason)
        return False


class UnfreezeAt(BaseCallback):
    """Two-phase fine-tuning: once `step` environment steps have passed, unfreeze `names` before the next update."""

    def __init__(self, names: list[str], step: int) -> None:
        super().__init__()
        self.names = names
        self.step = step
        self.unfrozen_at: int | None = None

    def _on_rollout_end(self) -> None:
        if self.unfrozen_at is None and self.num_timesteps >= self.step:
            unfreeze_agent(self.model, self.names)
            self.unfrozen_at = self.num_timesteps
            self.logger.record("params/unfrozen_at", self.num_timesteps)

    def _on_step(self) -> bool:
        return True


class NumericalStop(Exception):
    """Raised inside SB3's loop when a parameter is NaN or infinite; run_training turns it into a clear error."""


NAN_CHECK_STEPS = 1024
"""Off-policy rollouts are a few steps long: the parameter check runs at most once per this many steps."""


class Checkpointing(BaseCallback):
    """Resumable checkpoints after every evaluation; a clean stop on Ctrl-C / SIGTERM; a stop when a parameter
    becomes NaN or infinite (checked at the start of each rollout, at most once per `NAN_CHECK_STEPS` steps
    for off-policy agents whose rollouts are a few steps long, and before every checkpoint, so no checkpoint
    ever holds one)."""

    def __init__(
        self,
        run_dir: Path,
        evaluation: EvaluateAndKeepBest,
        extra: list[BaseCallback],
        buffer_seconds: float = 0.0,
    ) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.evaluation = evaluation
        self.extra = extra
        self.buffer_seconds = buffer_seconds
        self._buffer_written: float | None = None  # time.monotonic() of the last replay buffer write
        self.signal: int | None = None
        self.numerical: str | None = None
        self.saved_at: int | None = None

    def state(self) -> dict[str, Any]:
        return {
            "evaluation": self.evaluation.state(),
            "unfrozen_at": [getattr(cb, "unfrozen_at", None) for cb in self.extra],
        }

    def save(self, *, stopping: bool = False) -> None:
        """A checkpoint; its replay buffer (off-policy agents) only when stopping or `buffer_seconds` after the
        last one was written."""
        if self.numerical is None and nonfinite_parameter(self.model.policy) is None:
            now = time.monotonic()
            with_buffer = (
                stopping or self._buffer_written is None or now - self._buffer_written >= self.buffer_seconds
            )
            save_agent_checkpoint(self.model, self.run_dir, self.state(), with_buffer=with_buffer)
            if with_buffer:
                self._buffer_written = now
            self.saved_at = self.num_timesteps

    def _on_training_start(self) -> None:
        self._params = list(self.model.policy.parameters())
        self._checked_at: int | None = None

    def _on_rollout_start(self) -> None:
        if self._checked_at is not None and self.num_timesteps - self._checked_at < NAN_CHECK_STEPS:
            return
        self._checked_at = self.num_timesteps
        bad = nonfinite_parameter(self.model.policy, self._params)
        if bad is not None and self.numerical is None:
            self.numerical = f"parameter {bad} became NaN or infinite after step {self.num_timesteps:,}"
            raise NumericalStop(self.numerical)  # before the policy acts on it

    def _on_step(self) -> bool:
        signum = stop_requested()
        if signum is not None and self.evaluation.stop_reason is None:  # a run stopping anyway just finishes
            self.signal = signum
            return False
        every = self.evaluation.eval_freq
        if every > 0 and self.evaluation.n_calls % every == 0:
            self.save()
        return True


def nonfinite_parameter(
    module: torch.nn.Module, params: list[torch.nn.Parameter] | None = None
) -> str | None:
    """The name of the first parameter holding NaN or infinity, or None. `params` (the module's parameters, kept
    by a caller that checks after every update) saves walking the module each time."""
    params = list(module.parameters()) if params is None else params
    # one fused pass over every parameter: a norm is finite exactly when its tensor is (or overflows, which the
    # exact check below then clears)
    if not params or bool(torch.stack(torch._foreach_norm(params)).isfinite().all()):
        return None
    for name, param in module.named_parameters():
        if not torch.isfinite(param).all():
            return name
    return None


class RunInfo(BaseCallback):
    """Write the run's config (text and hparams) and its trainable/frozen parameter counts to TensorBoard."""

    def __init__(
        self, config_yaml: str, hparams: dict[str, Any], texts: dict[str, str] | None = None
    ) -> None:
        super().__init__()
        self.config_yaml = config_yaml
        self.hparams = hparams
        self.texts = texts or {}

    def _on_training_start(self) -> None:
        writer = next(
            (fmt.writer for fmt in self.logger.output_formats if isinstance(fmt, TensorBoardOutputFormat)),
            None,
        )
        if writer is not None:
            writer.add_text("config", _markdown_code(self.config_yaml), 0)
            for tag, text in self.texts.items():
                writer.add_text(tag, _markdown_code(text), 0)
        metrics = {"eval/mean_reward": 0.0, "eval/mean_ep_length": 0.0}
        self.logger.record("hparams", HParam(self.hparams, metrics), exclude=("stdout", "log", "json", "csv"))
        self._record_parameters()

    def _on_rollout_end(self) -> None:
        self._record_parameters()

    def _on_step(self) -> bool:
        return True

    def _record_parameters(self) -> None:
        # counted again only when which parameters train changed (a second fine-tuning phase): off-policy
        # rollouts are a few steps long, and the policy's parameters do not change otherwise
        params = getattr(self, "_params", None) or list(self.model.policy.parameters())
        self._params = params
        trainable_flags = tuple(param.requires_grad for param in params)
        if trainable_flags != getattr(self, "_flags", None):
            self._flags, self._counts = trainable_flags, count_parameters(self.model.policy)
        trainable, frozen = self._counts
        self.logger.record("params/trainable", trainable)
        self.logger.record("params/frozen", frozen)


def _markdown_code(text: str) -> str:
    # TensorBoard renders text as markdown; indent by 4 spaces to keep it verbatim
    return "\n".join("    " + line for line in text.splitlines())


def flat_hparams(data: dict[str, Any], prefix: str = "") -> dict[str, bool | str | float | int]:
    """Flatten a nested config into TensorBoard-hparams-compatible scalars (lists become strings)."""
    flat: dict[str, bool | str | float | int] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat
