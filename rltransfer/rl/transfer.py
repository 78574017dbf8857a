"""Source agent -> target agent: copy every layer whose name and shape fit, re-initialise the rest, freeze, fine-tune.

Reading the source is :mod:`rltransfer.rl.sources`, deciding what fits is :mod:`rltransfer.rl.mapping`, the
stages of a chain are :mod:`rltransfer.rl.chain`; this module runs them in order into run directories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm

from rltransfer.agents.builder import build_agent
from rltransfer.agents.config import AgentConfig, check_source_learning, inherit_agent
from rltransfer.agents.freezing import decay_toward_source, freeze_agent, is_target_copy, layer_copies
from rltransfer.agents.kickstart import kickstart_from
from rltransfer.core.config import coerce_config, load_yaml
from rltransfer.core.device import resolve_device
from rltransfer.core.errors import ConfigError, LayerSelectionError, TransferError, short_list
from rltransfer.core.interrupt import Interrupted, stop_on_signals
from rltransfer.core.io import atomic_path, lock_run_dir, prepare_run_dir, release_run_dir, write_text
from rltransfer.core.layers import select_layers
from rltransfer.core.record import RunRecord, restart_if_never_checkpointed
from rltransfer.core.state import digest
from rltransfer.rl.callbacks import OnEvaluation, UnfreezeAt
from rltransfer.rl.chain import chain_stage_config, check_chain, stage_state, stage_summary
from rltransfer.rl.combine import combined_agent, load_and_freeze
from rltransfer.rl.config import EnvConfig, TransferConfig, check_combine
from rltransfer.rl.environment import make_envs
from rltransfer.rl.hub import is_hub
from rltransfer.rl.instances import attach_source_transitions
from rltransfer.rl.mapping import LayerMapping, covered, describe_weights, map_weights
from rltransfer.rl.normalization import VEC_NORMALIZE, apply_scaling, scaling_for
from rltransfer.rl.sources import SourceAgent, load_source, source_agent_config
from rltransfer.rl.training import RunResult, resume_config, run_training


@dataclass
class TransferResult(RunResult):
    """A transfer run's result, with its layer mapping and whether the frozen layers stayed bit-identical."""

    mapping: LayerMapping | None = None
    frozen_unchanged: bool | None = None
    chain: list[dict[str, Any]] = field(default_factory=list)
    """The intermediate stages of a transitive transfer: game, run directory, steps, best return."""


def transfer(
    config: TransferConfig | str | Path | dict[str, Any] | None = None,
    *,
    progress_bar: bool = True,
    verbose: bool = True,
    resume: str | Path | None = None,
    source: str | None = None,
    on_evaluation: OnEvaluation | None = None,
) -> TransferResult:
    """Transfer a source agent to the config's target env, freeze the named layers and fine-tune the rest.

    With a ``chain``, the agent first goes through each intermediate game in turn (transitive transfer); the
    stages are run directories under ``<run_dir>/chain/``. ``resume`` continues an interrupted transfer from its
    run directory (the same source must still exist); finished chain stages are reused, not retrained. With
    ``resume``, ``source`` says where that source lies now when it moved since the run started (a study directory
    moved, a run continued on another machine); its digest must match the recorded one. ``on_evaluation`` is
    called with the target's curve after each evaluation; a reason it returns stops the run there."""
    if resume is not None:
        lock_run_dir(Path(resume))
        config = resume_config(resume, TransferConfig)
        if source is not None:
            config = config.model_copy(update={"source": source})
        else:
            _check_source_still_there(config.source, Path(resume))
    config = coerce_config(config, TransferConfig)
    check_chain(config)
    run_dir = Path(resume) if resume is not None else None
    if not config.chain:  # the run directory is created once the source, mapping and freezing are known good
        return _transfer_stage(
            config, run_dir, config.source, config.trust_source, first=True,
            resume=resume is not None and not restart_if_never_checkpointed(Path(resume)),
            progress_bar=progress_bar, verbose=verbose, on_evaluation=on_evaluation,
        )  # fmt: skip
    # a missing or unreadable source fails before the chain's run directory exists
    load_source(config.source, trust=config.trust_source)
    if run_dir is None:
        run_dir = prepare_run_dir(config.log_root, config.name)
        # what --resume needs if a signal stops the chain before its last stage starts
        write_text(run_dir / "config.yaml", _dump_keeping_agent_changes(config))
        RunRecord(run_dir).update(kind="transfer", status="running", env=config.env.id)
    with stop_on_signals(resume=(run_dir, "transfer")):  # a second Ctrl-C in any stage names the whole run
        source, trust, stages = _run_chain(config, run_dir, progress_bar, verbose)
        if verbose:
            print(
                f"Chain stage {len(config.chain) + 1} of {len(config.chain) + 1}: {config.env.id}", flush=True
            )
        return _transfer_stage(
            config, run_dir, source, trust, first=False,
            resume=resume is not None and RunRecord(run_dir).has_checkpoint(),
            progress_bar=progress_bar, verbose=verbose, chain=stages, on_evaluation=on_evaluation,
        )  # fmt: skip


def _run_chain(
    config: TransferConfig, run_dir: Path, progress_bar: bool, verbose: bool
) -> tuple[str, bool, list[dict[str, Any]]]:
    """Run the intermediate stages in order (reusing finished ones, continuing an interrupted one); the last
    stage's run directory is the source of the final transfer."""
    source, trust = config.source, config.trust_source
    stages: list[dict[str, Any]] = []
    for index in range(len(config.chain)):
        stage_config = chain_stage_config(config, index, run_dir, source, trust)
        stage_dir = Path(stage_config.log_root) / stage_config.name
        if verbose:
            print(
                f"Chain stage {index + 1} of {len(config.chain) + 1}: {stage_config.env.id} "
                f"({stage_config.budget:,} steps) into {stage_dir}",
                flush=True,
            )
        try:
            state = stage_state(stage_config, stage_dir)
            if state == "finished" and verbose:
                print(f"  reusing the finished stage {stage_dir}", flush=True)
            elif state == "interrupted":
                transfer(progress_bar=progress_bar, verbose=verbose, resume=stage_dir, source=source)
            elif state == "new":
                transfer(stage_config, progress_bar=progress_bar, verbose=verbose)
        except Interrupted as stop:
            raise Interrupted(
                stop.signum, run_dir, "transfer", f" in chain stage {index + 1} ({stage_config.env.id})"
            ) from None
        stages.append(stage_summary(stage_config, stage_dir))
        source, trust = str(stage_dir), False
    return source, trust, stages


def _transfer_stage(
    config: TransferConfig,
    run_dir: Path | None,
    source_path: str,
    trust: bool,
    *,
    first: bool,
    resume: bool,
    progress_bar: bool,
    verbose: bool,
    chain: list[dict[str, Any]] | None = None,
    on_evaluation: OnEvaluation | None = None,
) -> TransferResult:
    """One transfer: load the source, build the target agent, map, freeze and fine-tune into `run_dir` (None:
    a new run directory, made once everything before training has worked)."""
    source = load_source(source_path, trust=trust)
    target_dir = Path(config.log_root) / config.name
    if run_dir is None and target_dir.resolve() == source.path.parent.resolve():
        raise ConfigError(
            f"The transfer would run in {target_dir}, which is its own source's run directory: the source would "
            "be moved aside and the run would name itself as its source. Give the transfer another `name`."
        )
    source_digest = digest(source.path)
    if resume and run_dir is not None:
        _check_same_source(run_dir, source.path, source_digest)
    agent = inherit_agent(source_agent_config(source), config.agent, "agent")
    check_source_learning(agent, "the transfer's agent")
    sources, trunk_states = [source], []
    if config.combine is not None:  # two sources' trunks side by side under new layers
        check_combine(config, agent, "the transfer")
        sources.append(load_source(config.combine.source, trust=config.combine.trust_source))
        if resume and run_dir is not None:
            _check_same_source(run_dir, sources[1].path, digest(sources[1].path), "combine_digest")
        agent, trunk_states = combined_agent(agent, sources, config.combine)
    config = config.model_copy(update={"agent": agent})  # config.yaml holds the agent built, for --resume
    train_env, eval_env = make_envs(config.env, config.seed)
    # combined trunks each keep their own source's observation statistics inside them
    scaling = scaling_for(train_env, source.scaling, config.env.id) if config.combine is None else None
    train_env, eval_env = apply_scaling(train_env, scaling), apply_scaling(eval_env, scaling)
    model = build_agent(agent, train_env, seed=config.seed, device=resolve_device(config.device))
    if config.combine is not None:
        mapping = load_and_freeze(model, trunk_states, sources, config.freeze)
    else:
        mapping = _map_and_freeze(model, source, agent, config, first)
    if agent.optimizer.decay_to == "source":  # L2-SP: anchored at the weights just copied from the source
        decay_toward_source(model, list(mapping.copied), agent.optimizer.weight_decay)
    if agent.kickstart.weight > 0:  # distil the source's policy, on the target's states, while fine-tuning
        model.kickstart = kickstart_from(model, agent, source.state_dict, source.path, config.budget)
    if (
        agent.source_transitions.steps > 0
    ):  # instance transfer: the source's experience replayed beside the target's
        attach_source_transitions(
            model, agent.source_transitions, source.state_dict, _source_game(source, agent), config.seed,
            config.budget,
        )  # fmt: skip
    table = mapping.format()
    if verbose:
        print(f"Transfer from {source.path} to {config.env.id}:\n{table}", flush=True)
    run_dir = run_dir or prepare_run_dir(config.log_root, config.name)
    if scaling is not None:  # beside the run's models, as SB3 keeps it: the run is a source with its scaling
        with atomic_path(run_dir / VEC_NORMALIZE, suffix=".pkl") as tmp:
            train_env.save(tmp)
    metadata: dict[str, Any] = {
        "algo": agent.algo,
        "agent": agent.model_dump(mode="json"),
        "source": str(source.path),
        "source_digest": source_digest,
        "mapping": mapping.as_dict(),
        # the source's VecNormalize statistics, kept fixed on the target's observations (or dropped: shapes)
        "observation_scaling": str(scaling.path) if scaling else ("dropped" if source.scaling else None),
    }
    if config.combine is not None:
        metadata["combine_source"] = str(sources[1].path)
        metadata["combine_digest"] = digest(sources[1].path)
        metadata["observation_scaling"] = "inside each trunk" if any(s.scaling for s in sources) else None
    if chain:
        metadata["chain"] = chain
        metadata["chain_steps"] = sum(int(stage["timesteps"] or 0) for stage in chain)
    callbacks = []
    if config.unfreeze_at is not None and mapping.frozen:
        callbacks.append(UnfreezeAt(mapping.frozen, config.unfreeze_at))
    # the frozen layers train in the second phase of a two-phase fine-tuning: nothing to compare then
    snapshot = {} if callbacks else _frozen_snapshot(model, mapping.frozen)
    outcome: dict[str, Any] = {}

    def frozen_outcome() -> dict[str, Any]:
        current = model.policy.state_dict()
        unchanged = all(torch.equal(v, current[k]) for k, v in snapshot.items()) if snapshot else None
        outcome.update(
            frozen_unchanged=unchanged, unfrozen_at=callbacks[0].unfrozen_at if callbacks else None
        )
        return outcome

    try:
        result = run_training(
            model, config, run_dir, eval_env, callbacks=callbacks, kind="transfer", progress_bar=progress_bar,
            metadata=metadata, texts={"transfer/layers": table}, resume=resume, on_finish=frozen_outcome,
            on_evaluation=_announcing_zero_shot(on_evaluation) if verbose else on_evaluation,
        )  # fmt: skip
    finally:
        release_run_dir(run_dir)
    return TransferResult(
        **vars(result), mapping=mapping, frozen_unchanged=outcome["frozen_unchanged"], chain=chain or []
    )


def _source_game(source: SourceAgent, agent: AgentConfig) -> EnvConfig:
    """The game the source plays to collect its transitions: the one given, else its own run's."""
    settings = agent.source_transitions
    if settings.env is not None:
        return EnvConfig(id=settings.env, context=dict(settings.context))
    saved = source.path.parent / "config.yaml"
    env = load_yaml(saved).get("env") if saved.is_file() else None
    if not isinstance(env, dict) or not isinstance(env.get("id"), str):
        raise ConfigError(
            f"`agent.source_transitions`: the source {source.path} is not inside an rltransfer run directory, so "
            "the game it was trained on is unknown. Give it: agent: {source_transitions: {env: GAME_ID}}."
        )
    return EnvConfig(id=env["id"], context=dict(env.get("context") or {}))


def _dump_keeping_agent_changes(config: TransferConfig) -> str:
    """The config as YAML, its ``agent`` section only as written (the keys set on top of each stage's source),
    so that a resumed chain builds every stage's agent as the first attempt did."""
    data = config.model_dump(mode="json")
    if config.agent is not None:
        data["agent"] = config.agent.model_dump(mode="json", exclude_unset=True)
    return yaml.safe_dump(data, sort_keys=False)


def _announcing_zero_shot(then: OnEvaluation | None) -> OnEvaluation:
    """Print the step-0 evaluation (the source's weights before any fine-tuning), then pass each curve on."""

    def listen(curve: list[dict[str, float]]) -> str | None:
        if len(curve) == 1:
            print(f"Zero-shot return (before fine-tuning): {curve[0]['mean_return']:.1f}", flush=True)
        return then(curve) if then is not None else None

    return listen


def _check_source_still_there(source: str, run_dir: Path) -> None:
    """A resumed transfer whose source moved says how to name where it lies now."""
    path = Path(source)
    if is_hub(source) or path.exists() or path.with_name(path.name + ".zip").exists():
        return
    release_run_dir(run_dir)
    raise TransferError(
        f"The source {source} that {run_dir} started from is gone (moved or deleted). If it moved, say where it "
        f"lies now: rltransfer transfer --resume {run_dir} --source NEW_PATH (in Python: transfer(resume=..., "
        "source=...)); it must be the same file (its SHA-256 is checked). Otherwise start the transfer again "
        "without --resume."
    )


def _check_same_source(run_dir: Path, path: Path, source_digest: str, key: str = "source_digest") -> None:
    """A resumed transfer continues from the source it started from, or not at all."""
    recorded = RunRecord.read(run_dir).get(key)
    if recorded is not None and recorded != source_digest:
        raise ConfigError(
            f"The source {path} changed after {run_dir} started from it (SHA-256 {recorded[:12]}... then, "
            f"{source_digest[:12]}... now), so the run cannot continue from it: its copied and frozen layers came "
            "from the earlier file. Put the original source back, or start the transfer again without --resume."
        )


def _map_and_freeze(
    model: BaseAlgorithm, source: SourceAgent, agent: AgentConfig, config: TransferConfig, first: bool
) -> LayerMapping:
    """Copy what fits from the source (re-initialising what the config names), then freeze the named layers."""
    policy = model.policy
    try:
        reinit = layer_copies(policy, select_layers(policy, config.reinit)) if config.reinit and first else []
    except LayerSelectionError as error:
        raise ConfigError(f"`reinit`: {error}") from None
    mapping = map_weights(source.state_dict, policy, reinit, config.layer_map if first else None)
    if not mapping.copied and any(info["reason"] != "asked" for info in mapping.reinitialised.values()):
        raise TransferError(
            f"No layer of the source {source.path} fits the target agent ({agent.algo} on {config.env.id}): "
            f"source layers {short_list(describe_weights(source.state_dict), 12)}; target layers "
            f"{short_list(describe_weights(policy.state_dict()), 12)}. Use the source's algorithm and hidden "
            "sizes in `agent` (or leave `agent` out to take them from the source)."
        )
    try:
        mapping.frozen = freeze_agent(model, config.freeze)
    except LayerSelectionError as error:
        raise ConfigError(f"`freeze`: {error}") from None
    return mapping


def _frozen_snapshot(model: BaseAlgorithm, frozen: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the frozen tensors, to check after fine-tuning that they stayed bit-identical. Target-network
    copies follow SB3's target updates (exact for DQN's copies, rounding-level for Polyak) and are left out."""
    return {
        key: value.detach().clone()
        for key, value in model.policy.state_dict().items()
        if covered(key.rpartition(".")[0], frozen) and not is_target_copy(key)
    }
