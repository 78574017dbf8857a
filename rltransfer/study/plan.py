"""Planning a study: one source agent; targets x strategies x seeds, each run a plain-data specification.

Planning validates everything before the first run starts (source, targets, strategies, layer names,
mappability) and produces :class:`RunSpec` values; an executor (:mod:`rltransfer.study.executor`) runs them and
the report (:mod:`rltransfer.study.report`) reads their results.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rltransfer.agents.builder import build_agent
from rltransfer.agents.config import AgentConfig, check_source_learning, inherit_agent, parse_agent
from rltransfer.agents.freezing import hidden_layers, trunk_layers
from rltransfer.core.config import load_config, resolve_config_path
from rltransfer.core.errors import ConfigError, LayerSelectionError, TransferError, did_you_mean, short_list
from rltransfer.core.layers import select_layers
from rltransfer.core.state import digest
from rltransfer.rl.combine import check_trunk_fits
from rltransfer.rl.config import EnvConfig, TrainConfig, check_combine
from rltransfer.rl.environment import check_env, make_envs, reward_threshold
from rltransfer.rl.mapping import map_weights
from rltransfer.rl.select import SourceSelection
from rltransfer.rl.sources import load_source, source_agent_config
from rltransfer.study.config import StudyConfig, StudyStrategy, StudyTarget

BUILTIN_STRATEGIES = ("scratch", "finetune", "freeze-trunk", "head-only")


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
        """What the run computes: its kind, its settings and its source's weights, but not where its files go
        (``log_root``, the source's path), so stored results stay valid when the study directory moves or is
        resumed through another path."""
        return config_fingerprint({"kind": self.kind, **self.config, "source": self.source_id})


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
    """Every run, in order: targets, then strategies, then seeds."""
    selections: dict[str, SourceSelection] = field(default_factory=dict)
    """With ``source.path: auto``: each target's ranking of the candidate sources, by target label."""
    target_sources: dict[str, Path] = field(default_factory=dict)
    """With ``source.path: auto``: the source each target's transfer runs start from, by target label."""


def target_label(target: StudyTarget) -> str:
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
            "combine": strategy.combine.model_dump(mode="json") if strategy.combine else None,
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
    for index, stage in enumerate(strategy.chain):
        check_env(stage.env, f"strategies {strategy.name}.chain.{index}.env")
    if strategy.layer_map:
        first_env = strategy.chain[0].env.model_dump() if strategy.chain else env
        policy = probe_policy(agent, EnvConfig(**{**first_env, "n_envs": env["n_envs"]}))
        try:
            map_weights(source_state, policy, layer_map=strategy.layer_map)
        except ConfigError as error:
            raise ConfigError(f"`strategies` {strategy.name}: {error}") from None


def _check_combined_source(strategy: StudyStrategy, agent: AgentConfig, env: dict[str, Any]) -> str:
    """A strategy's second source loads and its trunk reads the target's observations; returns its digest (part
    of every run's fingerprint: stored results go stale when that source changes)."""
    assert strategy.combine is not None
    where = f"`strategies` {strategy.name}"
    check_combine(strategy, _strategy_agent(agent, strategy), where)
    second = load_source(strategy.combine.source, trust=strategy.combine.trust_source)
    probe_env, other = make_envs(EnvConfig(**{**env, "n_envs": 1}), 0)
    try:
        check_trunk_fits(second, probe_env.observation_space)
    except TransferError as error:
        raise ConfigError(f"{where}.combine: {error}") from None
    finally:
        probe_env.close()
        other.close()
    return digest(second.path)[:16]


def _strategy_agent(agent: AgentConfig, strategy: StudyStrategy | str) -> AgentConfig:
    """The study's agent with a strategy's own overrides (e.g. a lower fine-tuning learning rate) merged in."""
    if isinstance(strategy, str) or not strategy.agent:
        return agent
    merged = _deep_merge(agent.model_dump(mode="json"), strategy.agent)
    if merged.get("algo") != agent.algo:
        raise ConfigError(
            f"`strategies` {strategy.name}.agent may not change the algorithm (the study uses {agent.algo})."
        )
    built = parse_agent(merged, f"`strategies` {strategy.name}")
    check_source_learning(built, f"`strategies` {strategy.name}")
    return built


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def probe_policy(agent: AgentConfig, env: EnvConfig) -> Any:
    """An untrained policy for `env`, to check layer names and shapes before any run starts."""
    train_env, eval_env = make_envs(env, 0)
    try:
        return build_agent(agent, train_env, seed=0, device="cpu").policy
    finally:
        train_env.close()
        eval_env.close()


@dataclass
class StudySourceInfo:
    """The study's source as planning needs it: where it is (or the config that trains it) and its weights."""

    path: Path | None
    config: TrainConfig | None
    state: dict[str, Any]
    agent: AgentConfig
    id: str


def plan_study(config: StudyConfig, *, tuning: bool = False) -> StudyPlan:
    """Validate the whole study (source, targets, strategies, layer names, mappability) and list its runs. With
    `tuning`, errors name the tuning's own keys (its one `target`, the tuning's `threshold`)."""
    study_dir = Path(config.log_root) / config.name
    labels = [target_label(t) for t in config.targets]
    if len(set(labels)) != len(labels):
        raise ConfigError("`targets`: two targets share a label; give them distinct `label`s.")
    strategies = _strategies(config)
    if config.source.auto:
        return _plan_with_chosen_sources(config, study_dir, labels, strategies)
    source = study_source(config, study_dir)
    # the agent every run builds, in full: study.yaml then resumes with exactly it
    config = config.model_copy(update={"agent": source.agent})
    n_envs = config.n_envs or (source.config.env.n_envs if source.config else 1)
    plan = StudyPlan(config, study_dir, source.path, source.config, {}, {})
    for index, (target, label) in enumerate(zip(config.targets, labels, strict=True)):
        where = "target" if tuning else f"targets.{index}"
        _plan_target(plan, source, strategies, where, target, label, n_envs, "tuning" if tuning else "study")
    return plan


def _plan_with_chosen_sources(
    config: StudyConfig, study_dir: Path, labels: list[str], strategies: dict[str, StudyStrategy | str]
) -> StudyPlan:
    """``source.path: auto``: each target's transfer runs start from the candidate its probe chooses, or, when
    no candidate beats a random policy there, from the best-ranked one (the report says scratch was advised).
    The probe is deterministic, so a resumed study chooses the same sources and finds its finished runs."""
    from rltransfer.rl.select import candidate_sources, select_source

    candidates = candidate_sources(config.source.candidates)
    plan = StudyPlan(config, study_dir, None, None, {}, {})
    for index, (target, label) in enumerate(zip(config.targets, labels, strict=True)):
        where = f"targets.{index}"
        env = EnvConfig(id=target.id, context=dict(target.context))
        check_env(env, where)
        print(f"Choosing the source for {label} among {len(candidates)} candidates...", flush=True)
        selection = select_source(
            candidates,
            env,
            episodes=config.source.probe_episodes,
            finetune_steps=config.source.probe_finetune,
            seed=config.source.seed,
            device=config.device,
            trust=config.source.trust_source,
            agent=config.agent,
        )
        print(selection.summary(advice=False), flush=True)
        probed = [candidate for candidate in selection.candidates if candidate.error is None]
        if not probed:
            raise TransferError(
                f"`{where}` {target.id}: no candidate source could play it "
                f"({'; '.join(f'{c.source}: {c.error}' for c in selection.candidates)})."
            )
        chosen = selection.chosen or probed[0]
        loaded = load_source(chosen.source, trust=config.source.trust_source)
        agent = inherit_agent(source_agent_config(loaded), config.agent, "study agent")
        source = StudySourceInfo(loaded.path, None, loaded.state_dict, agent, digest(loaded.path)[:16])
        plan.selections[label] = selection
        plan.target_sources[label] = loaded.path
        n_envs = config.n_envs or 1
        _plan_target(plan, source, strategies, where, target, label, n_envs)
    return plan


def study_source(config: StudyConfig, study_dir: Path) -> StudySourceInfo:
    if config.source.auto:
        raise ConfigError(
            "`source.path: auto` chooses a source per target, which only a study does; give this one `source.path` "
            "(rank the candidates first with: rltransfer select CANDIDATES... --env TARGET)."
        )
    if (config.source.config is None) == (config.source.path is None):
        raise ConfigError(
            "`source` needs exactly one of `config` (a train config to run first) or `path` (an agent)."
        )
    if config.source.config is not None:
        overrides = {
            "name": "source",
            "log_root": str(study_dir),
            "seed": config.source.seed,
            "device": config.device,
        }
        source_config = load_config(resolve_config_path(config.source.config), TrainConfig, overrides)
        state = probe_policy(source_config.agent, source_config.env).state_dict()
        agent = inherit_agent(source_config.agent, config.agent, "study agent")
        return StudySourceInfo(None, source_config, state, agent, config_fingerprint(source_config))
    source = load_source(config.source.path, trust=config.source.trust_source)
    agent = inherit_agent(source_agent_config(source), config.agent, "study agent")
    return StudySourceInfo(source.path, None, source.state_dict, agent, digest(source.path)[:16])


def _plan_target(
    plan: StudyPlan,
    source: StudySourceInfo,
    strategies: dict[str, StudyStrategy | str],
    where: str,
    target: StudyTarget,
    label: str,
    n_envs: int,
    owner: str = "study",
) -> None:
    """Check one target (game, threshold, mappability) and add its runs, every strategy x seed, to the plan."""
    config = plan.config
    env = {"id": target.id, "context": dict(target.context), "n_envs": n_envs}
    check_env(EnvConfig(**env), where)
    threshold = config.threshold if config.threshold != "env" else reward_threshold(target.id)
    if threshold is None:
        raise ConfigError(
            f"`{where}` {target.id} has no reward threshold; set the {owner}'s `threshold` to a return."
        )
    plan.thresholds[label] = float(threshold)
    policy = probe_policy(source.agent, EnvConfig(**env))
    mapping = map_weights(source.state, policy)
    if not mapping.copied:  # (a strategy may still re-initialise everything on purpose, as a control)
        raise TransferError(
            f"`{where}` {target.id}: no layer of the source fits the target agent (source tensors "
            f"{short_list(list(source.state), 8)}). Choose a target with compatible spaces or set `agent`."
        )
    for name, strategy in strategies.items():
        layers = _resolve_layers(policy, strategy, set(mapping.reinitialised))
        source_id = source.id
        if isinstance(strategy, StudyStrategy):
            _check_strategy_extras(strategy, source.state, source.agent, env)
            if strategy.combine is not None:
                source_id += "+" + _check_combined_source(strategy, source.agent, env)
        overrides = strategy.agent if isinstance(strategy, StudyStrategy) else {}
        plan.strategies.setdefault(name, {**layers, "agent": overrides})
        agent = _strategy_agent(source.agent, strategy)
        for seed in config.seed_list():
            plan.runs.append(
                _run_spec(
                    config, plan.study_dir, label, name, seed, env, agent, layers, source.path, source_id
                )
            )


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
    if layers.get("combine"):
        run["combine"] = copy.deepcopy(layers["combine"])
    return RunSpec(label, strategy, seed, "transfer", run, run_dir, source_id)


def config_fingerprint(config: BaseModel | dict[str, Any]) -> str:
    """A short digest of a run's settings without ``log_root`` (which follows the study directory),
    ``eval.envs`` (how many evaluation episodes play at once changes how fast, never what they return) and
    ``agent.kickstart`` / ``agent.source_transitions`` / ``agent.policy.trunks`` / ``combine`` when they are off."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    data.pop("log_root", None)
    agent = data.get("agent")
    if isinstance(agent, dict):
        # settings left off are what every run did before they existed: stored results stay valid
        off = {"kickstart": not (agent.get("kickstart") or {}).get("weight"),
               "source_transitions": not (agent.get("source_transitions") or {}).get("steps")}  # fmt: skip
        data["agent"] = {key: value for key, value in agent.items() if not off.get(key)}
        policy = data["agent"].get("policy")
        if isinstance(policy, dict) and policy.get("trunks") is None:
            data["agent"]["policy"] = {key: value for key, value in policy.items() if key != "trunks"}
    if data.get("combine", 0) is None:
        data.pop("combine")
    evaluation = data.get("eval")
    if isinstance(evaluation, dict) and "envs" in evaluation:
        data["eval"] = {key: value for key, value in evaluation.items() if key != "envs"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
