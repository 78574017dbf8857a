"""Transitive transfer as data: the config of each intermediate stage of a chain, and what a stage left behind.

A chain ``source -> chain[0] -> ... -> env`` trains each intermediate game for its own budget, each stage
fine-tuning the previous stage's best model. Stages are run directories ``<run_dir>/chain/N-<label>/``; the
orchestration is :func:`rltransfer.rl.transfer.transfer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml

from rltransfer.core.config import dump_config
from rltransfer.core.record import RunRecord
from rltransfer.rl.config import TransferConfig
from rltransfer.rl.environment import check_env

StageState = Literal["finished", "interrupted", "new"]


def check_chain(config: TransferConfig) -> None:
    """Every chain stage names a game that exists (with valid context) before anything trains."""
    for index, stage in enumerate(config.chain):
        check_env(stage.env, f"chain.{index}.env")


def chain_stage_config(
    config: TransferConfig, index: int, run_dir: Path, source: str, trust: bool
) -> TransferConfig:
    """The transfer config of intermediate stage `index`: its game, budget and evaluation, the transfer's agent
    and freezing; ``reinit`` and ``layer_map`` only apply when leaving the original source."""
    stage = config.chain[index]
    label = stage.env.id.split(":")[-1].split("/")[-1].rsplit("-v", 1)[0]
    return config.model_copy(
        update={
            "name": f"{index + 1}-{label}",
            "log_root": str(run_dir / "chain"),
            "env": stage.env,
            "budget": stage.budget,
            "eval": stage.eval or config.eval,
            "source": source,
            "trust_source": trust,
            "reinit": config.reinit if index == 0 else [],
            "layer_map": config.layer_map if index == 0 else {},
            "chain": [],
        }
    )


def stage_state(config: TransferConfig, stage_dir: Path) -> StageState:
    """Whether a stage with exactly this config already finished, was interrupted with a checkpoint to resume
    from, or must run afresh."""
    record = RunRecord.read(stage_dir)
    same = False
    if record.config_path.is_file():
        saved = _placeless(record.config_path.read_text(encoding="utf-8"))
        wanted = _placeless(dump_config(config))
        if isinstance(saved, dict) and isinstance(wanted, dict):
            # the stage saved the agent it built: its source's, with what the config's agent section sets
            saved_agent, _ = saved.pop("agent", None), wanted.pop("agent", None)
            given = config.agent.model_dump(mode="json", exclude_unset=True) if config.agent else {}
            same = saved == wanted and _within(given, saved_agent)
    if same and record.status == "finished" and record.best_model.is_file():
        return "finished"
    if same and record.status == "interrupted" and record.has_checkpoint():
        return "interrupted"
    return "new"


def _within(given: Any, saved: Any) -> bool:
    """Every key of `given` has the same value in `saved` (recursively)."""
    if isinstance(given, dict):
        return isinstance(saved, dict) and all(_within(v, saved.get(k)) for k, v in given.items())
    return given == saved


def _placeless(config_text: str) -> Any:
    """A stage's config without where its files and its source lie: a run directory that moved (a study
    resumed elsewhere, a run brought back from another machine) still matches its finished stages."""
    try:
        values = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return None
    if isinstance(values, dict):
        for key in ("log_root", "source"):
            values.pop(key, None)
    return values


def stage_summary(config: TransferConfig, stage_dir: Path) -> dict[str, Any]:
    """What a finished stage reports: game, run directory, budget, steps and best return."""
    record = RunRecord.read(stage_dir)
    return {
        "env": config.env.id,
        "run_dir": str(stage_dir),
        "budget": config.budget,
        "timesteps": record.get("timesteps"),
        "best_mean_return": record.get("best_mean_return"),
    }
