"""Transfer studies: one source agent; targets x strategies x seeds, against learning from scratch.

Every run of a study gets the same budget and evaluation schedule (no early stopping). Runs execute in a local
process pool; each writes ``result.json`` into its run directory as soon as it ends, so re-running an interrupted
study skips what finished, and a run that fails is reported without losing the others. The metrics, report,
plots and TensorBoard summaries are in :mod:`rltransfer.report`.

Study directory ``<log_root>/<name>/``: ``source/`` (when the study trains its source), ``runs/<target>/<strategy>/
seed<k>/`` (one run directory each), ``report.md``, ``report.json``, ``curves.png`` and ``summary/`` (TensorBoard).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rltransfer.checkpoints import digest
from rltransfer.config import (
    AgentConfig,
    EnvConfig,
    StudyConfig,
    StudyStrategy,
    TrainConfig,
    TransferConfig,
    dump_config,
    load_config,
    parse_agent,
    parse_config,
    resolve_config_path,
)
from rltransfer.errors import ConfigError, LayerSelectionError, TransferError, did_you_mean, short_list
from rltransfer.interrupt import Interrupted, stop_on_signals, stop_requested
from rltransfer.io import write_json, write_text

STUDY_CONFIG = "study.yaml"
INTERRUPTED = "interrupted.json"  # left by an interrupted study run: which run its checkpoint belongs to

BUILTIN_STRATEGIES = ("scratch", "finetune", "freeze-trunk", "head-only")
RESULT = "result.json"


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: which target, strategy and seed, and the full config it runs with."""

    target: str
    strategy: str
    seed: int
    kind: str  # "train" (scratch) or "transfer"
    config: dict[str, Any]
    run_dir: Path
    source_id: str = ""  # identifies the source's weights: a stored result is stale once they change

    @property
    def key(self) -> str:
        return f"{self.target}/{self.strategy}/seed{self.seed}"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(
            json.dumps([self.kind, self.config, self.source_id], sort_keys=True, default=str).encode()
        ).hexdigest()[:16]


@dataclass
class StudyPlan:
    """Everything a study will run, resolved and validated before the first run starts."""

    config: StudyConfig
    study_dir: Path
    source_path: Path | None
    source_config: TrainConfig | None
    thresholds: dict[str, float]
    strategies: dict[str, dict[str, Any]]
    runs: list[RunSpec] = field(default_factory=list)


def target_label(target: Any) -> str:
    """``rltransfer/CartPoleLongPole-v1`` -> ``CartPoleLongPole``."""
    if target.label:
        return target.label
    name = target.id.split(":")[-1].split("/")[-1]
    return name.rsplit("-v", 1)[0] if "-v" in name else name


def _strategies(config: StudyConfig) -> dict[str, StudyStrategy | str]:
    chosen: dict[str, StudyStrategy | str] = {"scratch": "scratch"}
    for item in config.strategies:
        name = item if isinstance(item, str) else item.name
        if isinstance(item, str) and item not in BUILTIN_STRATEGIES:
            raise ConfigError(
                f"`strategies`: unknown strategy `{item}`{did_you_mean(item, BUILTIN_STRATEGIES)}. Built-in strategies "
                f"are {', '.join(BUILTIN_STRATEGIES)}; name your own as {{name: NAME, freeze: [...], reinit: [...]}}."
            )
        if name == "scratch" and not isinstance(item, str):
            raise ConfigError(
                "`strategies`: `scratch` is the built-in baseline; give your strategy another name."
            )
        if name in chosen and name != "scratch":
            raise ConfigError(f"`strategies`: `{name}` appears twice; give each strategy a distinct name.")
        chosen[name] = item
    return chosen


def _resolve_layers(policy: Any, strategy: StudyStrategy | str, reinitialised: set[str]) -> dict[str, Any]:
    """The freeze and re-initialise lists of a strategy, as selectors that match this policy. The built-in
    strategies never freeze a layer that could not be copied (frozen random features help no one)."""
    from rltransfer.layers import select_layers
    from rltransfer.sb3 import hidden_layers, trunk_layers

    if isinstance(strategy, StudyStrategy):
        for key in ("freeze", "reinit"):
            patterns = getattr(strategy, key)
            if patterns:
                try:
                    select_layers(policy, patterns)
                except LayerSelectionError as error:
                    raise ConfigError(f"`strategies` {strategy.name}.{key}: {error}") from None
        return {
            "freeze": list(strategy.freeze),
            "reinit": list(strategy.reinit),
            "unfreeze_at": strategy.unfreeze_at,
            "layer_map": dict(strategy.layer_map),
            "chain": [stage.model_dump(mode="json") for stage in strategy.chain],
        }
    if strategy == "head-only":
        return {
            "freeze": [n for n in hidden_layers(policy) if n not in reinitialised],
            "reinit": [],
            "unfreeze_at": None,
        }
    if strategy == "freeze-trunk":
        return {
            "freeze": [n for n in trunk_layers(policy) if n not in reinitialised],
            "reinit": [],
            "unfreeze_at": None,
        }
    return {"freeze": [], "reinit": [], "unfreeze_at": None}


def _check_strategy_extras(
    strategy: StudyStrategy, source_state: dict[str, Any], agent: AgentConfig, env: dict[str, Any]
) -> None:
    """A strategy's ``layer_map`` names real layers of matching shapes; its chain stages name real games."""
    from rltransfer.environment import check_env
    from rltransfer.transfers import map_weights

    for index, stage in enumerate(strategy.chain):
        check_env(stage.env, f"strategies {strategy.name}.chain.{index}.env")
    if strategy.layer_map:
        first_env = strategy.chain[0].env.model_dump() if strategy.chain else env
        policy = _probe_policy(agent, EnvConfig(**{**first_env, "n_envs": env["n_envs"]}))
        try:
            map_weights(source_state, policy, layer_map=strategy.layer_map)
        except ConfigError as error:
            raise ConfigError(f"`strategies` {strategy.name}: {error}") from None


def _strategy_agent(agent: AgentConfig, strategy: StudyStrategy | str) -> AgentConfig:
    """The study's agent with a strategy's own overrides (e.g. a lower fine-tuning learning rate) merged in."""
    if isinstance(strategy, str) or not strategy.agent:
        return agent
    merged = _deep_merge(agent.model_dump(mode="json"), strategy.agent)
    if merged.get("algo") != agent.algo:
        raise ConfigError(
            f"`strategies` {strategy.name}.agent may not change the algorithm (the study uses {agent.algo})."
        )
    return parse_agent(merged, f"`strategies` {strategy.name}")


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _probe_policy(agent: AgentConfig, env: EnvConfig) -> Any:
    """An untrained policy for `env`, to check layer names and shapes before any run starts."""
    from rltransfer.agents import build_agent
    from rltransfer.environment import make_envs

    train_env, eval_env = make_envs(env, 0)
    try:
        return build_agent(agent, train_env, seed=0, device="cpu").policy
    finally:
        train_env.close()
        eval_env.close()


def plan_study(config: StudyConfig) -> StudyPlan:
    """Validate the whole study (source, targets, strategies, layer names, mappability) and list its runs."""
    from rltransfer.environment import check_env, reward_threshold
    from rltransfer.transfers import load_source, map_weights, source_agent_config

    study_dir = Path(config.log_root) / config.name
    if (config.source.config is None) == (config.source.path is None):
        raise ConfigError(
            "`source` needs exactly one of `config` (a train config to run first) or `path` (an agent)."
        )
    source_config: TrainConfig | None = None
    source_path: Path | None = None
    if config.source.config is not None:
        source_config = load_config(
            resolve_config_path(config.source.config),
            TrainConfig,
            {
                "name": "source",
                "log_root": str(study_dir),
                "seed": config.source.seed,
                "device": config.device,
            },
        )  # type: ignore[assignment]
        agent = config.agent or source_config.agent
        source_state = _probe_policy(source_config.agent, source_config.env).state_dict()
    else:
        source = load_source(config.source.path, trust=config.source.trust_source)
        source_path = source.path
        source_state = source.state_dict
        agent = config.agent or source_agent_config(source)
    source_id = (
        _fingerprint(source_config.model_dump_json())
        if source_config
        else digest(Path(source_path or ""))[:16]
    )
    n_envs = config.n_envs or (source_config.env.n_envs if source_config else 1)
    strategies = _strategies(config)
    seeds = config.seed_list()
    thresholds: dict[str, float] = {}
    resolved: dict[str, dict[str, Any]] = {}
    runs: list[RunSpec] = []
    labels = [target_label(t) for t in config.targets]
    if len(set(labels)) != len(labels):
        raise ConfigError("`targets`: two targets share a label; give them distinct `label`s.")
    for index, (target, label) in enumerate(zip(config.targets, labels, strict=True)):
        where = f"targets.{index}"
        env = {"id": target.id, "context": dict(target.context), "n_envs": n_envs}
        check_env(EnvConfig(**env), where)
        threshold = config.threshold if config.threshold != "env" else reward_threshold(target.id)
        if threshold is None:
            raise ConfigError(
                f"`{where}` {target.id} has no reward threshold; set the study's `threshold` to a return."
            )
        thresholds[label] = float(threshold)
        policy = _probe_policy(agent, EnvConfig(**env))
        mapping = map_weights(source_state, policy)
        if not mapping.copied:  # (a strategy may still re-initialise everything on purpose, as a control)
            raise TransferError(
                f"`{where}` {target.id}: no layer of the source fits the target agent (source tensors "
                f"{short_list(list(source_state), 8)}). Choose a target with compatible spaces or set `agent`."
            )
        for name, strategy in strategies.items():
            layers = _resolve_layers(policy, strategy, set(mapping.reinitialised))
            if isinstance(strategy, StudyStrategy):
                _check_strategy_extras(strategy, source_state, agent, env)
            overrides = strategy.agent if isinstance(strategy, StudyStrategy) else {}
            resolved.setdefault(name, {**layers, "agent": overrides})
            strategy_agent = _strategy_agent(agent, strategy)
            for seed in seeds:
                runs.append(
                    _run_spec(
                        config,
                        study_dir,
                        label,
                        name,
                        seed,
                        env,
                        strategy_agent,
                        layers,
                        source_path,
                        source_id,
                    )
                )
    return StudyPlan(config, study_dir, source_path, source_config, thresholds, resolved, runs)


def _run_spec(
    config: StudyConfig,
    study_dir: Path,
    label: str,
    strategy: str,
    seed: int,
    env: dict[str, Any],
    agent: AgentConfig,
    layers: dict[str, Any],
    source_path: Path | None,
    source_id: str,
) -> RunSpec:
    run = {
        "name": f"seed{seed}",
        "seed": seed,
        "device": config.device,
        "log_root": str(study_dir / "runs" / label / strategy),
        "budget": config.budget,
        "env": copy.deepcopy(env),
        "eval": {**config.eval.model_dump(), "patience": None, "threshold": None},
        "agent": agent.model_dump(mode="json"),
    }
    run_dir = study_dir / "runs" / label / strategy / f"seed{seed}"
    if strategy == "scratch":
        return RunSpec(label, strategy, seed, "train", run, run_dir)
    stage_eval = run["eval"]
    run.update(
        source=str(source_path) if source_path else str(study_dir / "source"),
        freeze=layers["freeze"],
        reinit=layers["reinit"],
        unfreeze_at=layers["unfreeze_at"],
        layer_map=layers.get("layer_map", {}),
        chain=[
            {
                "env": {**stage["env"], "n_envs": env["n_envs"]},
                "budget": stage["budget"],
                "eval": stage["eval"] or stage_eval,
            }
            for stage in layers.get("chain", [])
        ],
        trust_source=bool(source_path and config.source.trust_source),
    )
    return RunSpec(label, strategy, seed, "transfer", run, run_dir, source_id)


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_result(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The stored result of a finished run with this exact config, else None."""
    path = run_dir / RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if result.get("status") != "finished" or result.get("fingerprint") != fingerprint:
        return None
    return result


def execute_run(kind: str, config: dict[str, Any], run_dir: str, fingerprint: str) -> dict[str, Any]:
    """Run one study run (in a worker process) and store its result beside it; failures are returned, not raised.

    A run that an earlier attempt left interrupted, with a checkpoint of this same run (config and source, by
    fingerprint), continues from it; any other leftover is cleared and the run starts afresh."""
    import multiprocessing

    import torch

    if multiprocessing.current_process().name != "MainProcess":
        torch.set_num_threads(1)  # one thread per worker; runs in the caller's process keep its setting
    path = Path(run_dir)
    parsed = parse_config(config, TrainConfig if kind == "train" else TransferConfig)
    started = time.perf_counter()
    try:
        try:
            result = _run(kind, parsed, path, resume=_resumable(path, fingerprint))
        except ConfigError:
            if not _resumable(path, fingerprint):
                raise
            # the checkpoint cannot be used (damaged, or the run had in fact finished): start this run afresh
            result = _run(kind, parsed, path, resume=False)
    except Interrupted as stop:  # Ctrl-C / SIGTERM: the run saved a checkpoint; the next attempt continues it
        write_json(path / INTERRUPTED, {"fingerprint": fingerprint, "signal": stop.signum})
        return {
            "status": "interrupted",
            "signal": stop.signum,
            "seconds": round(time.perf_counter() - started, 2),
        }
    except Exception as error:  # one failing run must not take the study down
        record = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
            "fingerprint": fingerprint,
            "seconds": round(time.perf_counter() - started, 2),
        }
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "error.json", record)
        return record
    record = {
        "status": "finished",
        "fingerprint": fingerprint,
        "curve": [[point["step"], point["mean_return"]] for point in result.curve],
        "best_mean_return": result.best_mean_return,
        "timesteps": result.timesteps,
        "seconds": round(result.seconds, 2),
        "frozen_unchanged": getattr(result, "frozen_unchanged", None),
    }
    (path / INTERRUPTED).unlink(missing_ok=True)
    write_json(path / RESULT, record)
    return record


def _run(kind: str, config: TrainConfig | TransferConfig, path: Path, resume: bool) -> Any:
    from rltransfer.training import train
    from rltransfer.transfers import transfer

    if not resume:
        shutil.rmtree(path, ignore_errors=True)  # an unfinished attempt without a usable checkpoint
        if kind == "train":
            return train(config, progress_bar=False)
        return transfer(config, progress_bar=False, verbose=False)
    if kind == "train":
        return train(progress_bar=False, resume=path)
    return transfer(progress_bar=False, verbose=False, resume=path)


def _resumable(path: Path, fingerprint: str) -> bool:
    """True when the run directory holds a checkpoint that an interrupted attempt of this same run (same config
    and source: the fingerprint) left behind."""
    try:
        marker = json.loads((path / INTERRUPTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("fingerprint") == fingerprint
        and (path / "checkpoint" / "state.json").is_file()
    )


def _train_source(plan: StudyPlan) -> Path:
    """Train the study's source once; a finished source with the same config is reused."""
    assert plan.source_config is not None
    run_dir = plan.study_dir / "source"
    fingerprint = _fingerprint(plan.source_config.model_dump_json())
    if finished_result(run_dir, fingerprint) is not None and (run_dir / "best_model.zip").exists():
        print(f"Source: reusing {run_dir}", flush=True)
        return run_dir
    print(f"Source: training {plan.source_config.env.id} into {run_dir}", flush=True)
    with stop_on_signals():
        record = execute_run("train", plan.source_config.model_dump(mode="json"), str(run_dir), fingerprint)
    if record["status"] == "interrupted":
        raise Interrupted(record["signal"], plan.study_dir, "study", " while training the source")
    if record["status"] != "finished":
        raise TransferError(
            f"The study's source failed to train: {record['error']}. See {run_dir / 'error.json'}."
        )
    return run_dir


def run_study(
    config: StudyConfig | str | Path | dict[str, Any], *, workers: int | None = None, progress: bool = True
) -> Any:
    """Run (or resume) a study and write its report; returns the :class:`rltransfer.report.StudyReport`."""
    from rltransfer.report import build_report
    from rltransfer.training import coerce_config

    config = coerce_config(config, StudyConfig)  # type: ignore[arg-type]
    assert isinstance(config, StudyConfig)
    plan = plan_study(config)
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    write_text(plan.study_dir / STUDY_CONFIG, dump_config(config))  # what --resume STUDY_DIR runs again
    if plan.source_config is not None:
        _train_source(plan)
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for spec in plan.runs:
        stored = finished_result(spec.run_dir, spec.fingerprint)
        if stored is not None:
            results[spec.key] = stored
        else:
            pending.append(spec)
    total = len(plan.runs)
    if results:
        print(f"Resuming: {len(results)} of {total} runs already finished.", flush=True)
    workers = workers or os.cpu_count() or 1
    started = time.perf_counter()
    _execute_all(pending, results, workers, total, progress, plan.study_dir)
    print(f"{len(pending)} runs in {time.perf_counter() - started:.0f} s with {workers} workers.", flush=True)
    return build_report(plan, results)


def _execute_all(
    pending: list[RunSpec],
    results: dict[str, dict[str, Any]],
    workers: int,
    total: int,
    progress: bool,
    study_dir: Path,
) -> None:
    done = total - len(pending)

    stopped: list[int] = []

    def report(spec: RunSpec, record: dict[str, Any]) -> None:
        nonlocal done
        if record["status"] == "interrupted":
            stopped.append(record["signal"])  # its checkpoint is in its run directory; the study stops below
            return
        done += 1
        results[spec.key] = record
        if progress:
            if record["status"] == "finished":
                curve = record["curve"]
                line = f"final return {curve[-1][1]:.1f}, best {record['best_mean_return']:.1f}"
            else:
                line = f"FAILED: {record['error']}"
            print(f"[{done}/{total}] {spec.key}: {line} ({record['seconds']:.0f} s)", flush=True)

    def interrupted(signum: int) -> Interrupted:
        finished = sum(1 for record in results.values() if record["status"] == "finished")
        return Interrupted(
            signum,
            study_dir,
            "study",
            f" ({finished} of {total} runs finished; runs in progress saved checkpoints)",
        )

    with stop_on_signals():
        if workers <= 1 or len(pending) <= 1:
            for spec in pending:
                report(spec, execute_run(spec.kind, spec.config, str(spec.run_dir), spec.fingerprint))
                if stop_requested() or stopped:
                    raise interrupted(stop_requested() or stopped[0])
            return
        pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=get_context("spawn"))
        try:
            futures = {
                pool.submit(execute_run, spec.kind, spec.config, str(spec.run_dir), spec.fingerprint): spec
                for spec in pending
            }
            waiting = set(futures)
            while waiting:
                finished_now, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished_now:
                    spec = futures[future]
                    try:
                        record = future.result()
                    except BrokenProcessPool as error:
                        record = {
                            "status": "failed",
                            "error": f"worker process died ({error})",
                            "seconds": 0.0,
                        }
                    except Exception as error:  # e.g. a result that could not be sent back
                        record = {
                            "status": "failed",
                            "error": f"{type(error).__name__}: {error}",
                            "seconds": 0.0,
                        }
                    report(spec, record)
                signum = stop_requested()
                if signum is not None:
                    # queued runs are dropped; running ones get SIGTERM, save a checkpoint and stop
                    running = list((getattr(pool, "_processes", None) or {}).values())
                    pool.shutdown(wait=False, cancel_futures=True)
                    for process in running:
                        if process.is_alive():
                            process.terminate()
                    for process in running:
                        process.join(timeout=60)
                    raise interrupted(signum)
            if stopped:  # a signal that reached only a worker: its run stopped, so the study is not complete
                raise interrupted(stopped[0])
        except BaseException:
            # a second Ctrl-C or another error: stop the workers now; finished runs' results are stored already
            workers_running = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in workers_running:
                if process.is_alive():
                    process.kill()
            raise
    pool.shutdown(wait=True)
    if any(str(record.get("error", "")).startswith("worker process died") for record in results.values()):
        print(
            "A worker process died. If you started the study from a Python script, guard the call with "
            '`if __name__ == "__main__":` (workers are started with the spawn method, which re-imports the script).',
            file=sys.stderr,
        )
    sys.stdout.flush()
