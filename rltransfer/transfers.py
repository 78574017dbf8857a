"""Source agent -> target agent: copy every layer whose name and shape fit, re-initialise the rest, freeze, fine-tune.

Source weights are read from the ``policy.pth`` inside the SB3 ``.zip`` with PyTorch's weights-only loader: no
pickled object in the file is ever executed. The target architecture comes from plain data: the transfer config,
the source run's ``config.yaml``, or the shapes of the source weights themselves.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rltransfer.checkpoints import CHECKPOINT_DIR
from rltransfer.config import AgentConfig, PolicyConfig, TransferConfig, dump_config, load_yaml, parse_agent
from rltransfer.errors import ConfigError, LayerSelectionError, TransferError, did_you_mean, short_list
from rltransfer.interrupt import Interrupted
from rltransfer.io import write_json, write_text
from rltransfer.training import RunResult, coerce_config, run_training


@dataclass
class SourceAgent:
    """A source agent's weights and, when known, the agent config it was trained with."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    agent: AgentConfig | None = None
    algo: str | None = None
    activation: str | None = None


@dataclass
class LayerMapping:
    """Which target layers were copied from the source, which were re-initialised (and why), which were frozen."""

    copied: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    reinitialised: dict[str, dict[str, Any]] = field(default_factory=dict)
    unused: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    """Target layers copied from a source layer of another name (``layer_map``)."""

    def format(self) -> str:
        """A table a person reads: one row per layer with its fate and shapes."""
        rows = [("layer", "action", "source shape", "target shape")]
        for name, shapes in self.copied.items():
            action = f"copied from {self.renamed[name]}" if name in self.renamed else "copied"
            action += ", frozen" if _covered(name, self.frozen) else ""
            rows.append((name, action, _shapes(shapes), _shapes(shapes)))
        for name, info in self.reinitialised.items():
            action = f"re-initialised ({info['reason']})" + (
                ", frozen" if _covered(name, self.frozen) else ""
            )
            rows.append(
                (name, action, _shapes(info["source"]) if info["source"] else "-", _shapes(info["target"]))
            )
        for name, shapes in self.unused.items():
            rows.append((name, "dropped (not in target)", _shapes(shapes), "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.append(
            f"{len(self.copied)} layers copied, {len(self.reinitialised)} re-initialised, "
            f"{len(self.unused)} dropped; frozen: {', '.join(self.frozen) or 'none'}"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "copied": {k: [list(s) for s in v] for k, v in self.copied.items()},
            "reinitialised": self.reinitialised,
            "unused": {k: [list(s) for s in v] for k, v in self.unused.items()},
            "frozen": self.frozen,
            "renamed": self.renamed,
        }


@dataclass
class TransferResult(RunResult):
    """A transfer run's result, with its layer mapping and whether the frozen layers stayed bit-identical."""

    mapping: LayerMapping | None = None
    frozen_unchanged: bool | None = None
    chain: list[dict[str, Any]] = field(default_factory=list)
    """The intermediate stages of a transitive transfer: game, run directory, steps, best return."""


def _covered(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _shapes(shapes: list[tuple[int, ...]]) -> str:
    return " ".join(str(list(shape)) for shape in shapes)


def _group(keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rpartition(".")[0], []).append(key)
    return groups


def load_source(source: str | Path, trust: bool = False) -> SourceAgent:
    """Read a source agent: an rltransfer run directory, or an SB3 ``.zip`` (rltransfer's or plain SB3's).

    By default nothing in the file is unpickled: weights go through PyTorch's weights-only loader and the
    architecture comes from the weights' shapes and SB3's readable JSON. ``trust=True`` (``trust_source: true``)
    uses SB3's full loader instead, which runs the pickled objects in the file: only for files you trust, e.g. a
    source with custom policy classes the readable data cannot describe."""
    path = Path(source)
    if not path.exists() and path.with_name(path.name + ".zip").exists():
        path = path.with_name(path.name + ".zip")
    if path.is_dir():
        run_dir, path = path, path / "best_model.zip"
        if not path.exists():
            raise TransferError(
                f"Source run directory {run_dir} holds no best_model.zip: the run did not finish or is not an "
                "rltransfer run. Point `source` at a finished run or at an SB3 .zip file."
            )
    elif not path.exists():
        raise TransferError(
            f"Source agent {path} does not exist. Set `source` to an rltransfer run directory (e.g. runs/NAME) "
            "or to an SB3 .zip saved with model.save(...); relative paths start at the current directory."
        )
    state_dict, data = _read_zip_trusted(path) if trust else _read_zip(path)
    agent = None
    config_path = path.parent / "config.yaml"
    if (path.parent / "run.json").exists() and config_path.exists():
        raw = load_yaml(config_path)
        if "agent" in raw and isinstance(raw["agent"], dict):
            agent = parse_agent(raw["agent"], str(config_path))
        elif isinstance(resolved := _read_record(path.parent).get("agent"), dict):
            # a transfer run that took its own source's agent records it in run.json
            agent = parse_agent(resolved, str(path.parent / "run.json"))
    algo = agent.algo if agent else _algo_from_data(data)
    return SourceAgent(
        path=path, state_dict=state_dict, agent=agent, algo=algo, activation=_activation_from_data(data)
    )


def _read_zip_trusted(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """SB3's own loader (unpickles the file's objects), its results put in the readable-data form used below."""
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, params, _ = load_from_zip_file(path, device="cpu")
    except Exception as error:
        raise TransferError(f"SB3 could not load {path} ({type(error).__name__}: {error}).") from None
    if not data or "policy" not in (params or {}):
        raise TransferError(f"{path} holds no SB3 policy weights.")
    readable: dict[str, Any] = {
        key: value for key, value in data.items() if isinstance(value, (int, float, str))
    }
    policy_class = data.get("policy_class")
    if isinstance(policy_class, type):
        readable["policy_class"] = {"__module__": policy_class.__module__}
    kwargs = data.get("policy_kwargs") or {}
    activation = kwargs.get("activation_fn")
    readable["policy_kwargs"] = {"activation_fn": str(activation)} if activation is not None else {}
    if "clip_range" in data:
        readable["clip_range"] = True
    return params["policy"], readable


def _read_zip(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "policy.pth" not in names:
                raise TransferError(
                    f"{path} is a zip file but not an SB3 agent (no policy.pth inside; it holds {short_list(names, 8)}). "
                    "Save agents with SB3's model.save(...) or use an rltransfer run directory."
                )
            weights = archive.read("policy.pth")
            data_text = archive.read("data").decode("utf-8", errors="replace") if "data" in names else "{}"
    except zipfile.BadZipFile:
        raise TransferError(
            f"{path} is not a readable zip file (truncated, corrupt, or another format). "
            "Re-save the agent with SB3's model.save(...) or point `source` at another file."
        ) from None
    try:
        state_dict = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler rejects anything but tensors and plain containers
        raise TransferError(
            f"{path}: policy.pth could not be read as plain weights ({type(error).__name__}: {error}). "
            "The file is damaged or carries objects other than tensors; rltransfer does not execute them."
        ) from None
    try:
        data = json.loads(data_text)
    except json.JSONDecodeError:
        data = {}
    return state_dict, data if isinstance(data, dict) else {}


def _algo_from_data(data: dict[str, Any]) -> str | None:
    module = (
        str((data.get("policy_class") or {}).get("__module__", ""))
        if isinstance(data.get("policy_class"), dict)
        else ""
    )
    for algo in ("dqn", "sac", "td3"):
        if f"stable_baselines3.{algo}." in module:
            return algo
    if "stable_baselines3.common" in module:
        return (
            "ppo" if "clip_range" in data else "a2c"
        )  # both use ActorCriticPolicy; only PPO has a clip range
    return None


def _activation_from_data(data: dict[str, Any]) -> str | None:
    """The activation named (as plain text) in the policy_kwargs of SB3's readable ``data`` file."""
    from rltransfer.agents import ACTIVATIONS

    kwargs = data.get("policy_kwargs")
    text = str(kwargs.get("activation_fn", "")) if isinstance(kwargs, dict) else ""
    for name, cls in ACTIVATIONS.items():
        if text.endswith(f".{cls.__name__}'>"):
            return name
    return None


def infer_hidden(state_dict: dict[str, torch.Tensor], algo: str) -> list[int] | dict[str, list[int]] | None:
    """Hidden layer sizes read off the source weights (for plain SB3 zips that carry no rltransfer config)."""

    def sizes(prefix: str, drop_last: bool) -> list[int]:
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.weight$")
        found = sorted(
            (int(m.group(1)), t.shape[0])
            for k, t in state_dict.items()
            if (m := pattern.match(k)) and t.dim() == 2
        )
        out = [size for _, size in found]
        return out[:-1] if drop_last else out

    if algo in ("ppo", "a2c"):
        pi, vf = sizes("mlp_extractor.policy_net", False), sizes("mlp_extractor.value_net", False)
        return None if not (pi or vf) else (pi if pi == vf else {"pi": pi, "vf": vf})
    if algo == "dqn":
        return sizes("q_net.q_net", True) or None
    if algo in ("sac", "td3"):
        pi, qf = (
            sizes("actor.latent_pi" if algo == "sac" else "actor.mu", algo == "td3"),
            sizes("critic.qf0", True),
        )
        return None if not (pi or qf) else (pi if pi == qf else {"pi": pi, "qf": qf})
    return None


def map_weights(
    source_state: dict[str, torch.Tensor],
    target: nn.Module,
    reinit: list[str] | None = None,
    layer_map: dict[str, str] | None = None,
) -> LayerMapping:
    """Copy, in place, every target layer whose tensors all exist in the source with the same shapes.

    Layers named in `reinit` (or inside them) keep their fresh initialisation even when they fit. `layer_map`
    (target layer -> source layer) copies a layer from a source layer of another name; its shapes must match.
    A layer whose shapes differ is re-initialised and labelled: an *input adapter* when only its input size
    differs (another observation shape), a *new head* when its output size differs (another action count).
    """
    reinit = reinit or []
    target_state = target.state_dict()
    target_groups, source_groups = _group(list(target_state)), _group(list(source_state))
    pairs = _expand_layer_map(layer_map or {}, target_groups, source_groups)
    mapping = LayerMapping()
    seen: set[int] = set()  # SB3 registers a shared extractor under several names: list it once
    with torch.no_grad():
        for layer, keys in target_groups.items():
            pointer = target_state[keys[0]].data_ptr()
            if pointer in seen:
                continue
            seen.add(pointer)
            source_layer = pairs.get(layer, layer)
            source_keys = [source_layer + key[len(layer) :] for key in keys]
            target_shapes = [tuple(target_state[k].shape) for k in keys]
            source_shapes = [tuple(source_state[k].shape) for k in source_keys if k in source_state]
            if layer in pairs and source_shapes != target_shapes:
                raise ConfigError(
                    f"`layer_map` maps target layer `{layer}` {_shapes(target_shapes)} to source layer "
                    f"`{source_layer}` {_shapes(source_shapes)}: the shapes differ, so the weights cannot be "
                    "copied. Map it to a layer of the same shape or remove the entry (it is then re-initialised)."
                )
            if _covered(layer, reinit):
                reason = "asked"
            elif len(source_shapes) < len(keys):
                reason = "not in source"
            elif source_shapes != target_shapes:
                reason = _shape_change(source_shapes, target_shapes)
            else:
                for key, source_key in zip(keys, source_keys, strict=True):
                    target_state[key].copy_(source_state[source_key].to(target_state[key].dtype))
                mapping.copied[layer] = target_shapes
                if source_layer != layer:
                    mapping.renamed[layer] = source_layer
                continue
            mapping.reinitialised[layer] = {
                "reason": reason,
                "source": source_shapes,
                "target": target_shapes,
            }
    used = set(pairs.values())
    for layer, keys in source_groups.items():
        if layer not in target_groups and layer not in used:
            mapping.unused[layer] = [tuple(source_state[k].shape) for k in keys]
    return mapping


def _shape_change(source: list[tuple[int, ...]], target: list[tuple[int, ...]]) -> str:
    """Why a layer cannot be copied, in the terms of transfer: another input (adapter) or output (head) size."""
    if len(source) != len(target) or any(len(a) != len(b) for a, b in zip(source, target, strict=True)):
        return "shape differs"
    weight_source, weight_target = source[0], target[0]
    if (
        len(weight_source) >= 2
        and weight_source[0] == weight_target[0]
        and weight_source[1] != weight_target[1]
    ):
        unit = "input channels" if len(weight_source) == 4 else "inputs"
        return f"input adapter: {weight_source[1]} -> {weight_target[1]} {unit}"
    if weight_source[0] != weight_target[0] and weight_source[1:] == weight_target[1:]:
        return f"new head: {weight_source[0]} -> {weight_target[0]} outputs"
    return "shape differs"


def _expand_layer_map(
    layer_map: dict[str, str], target_groups: dict[str, list[str]], source_groups: dict[str, list[str]]
) -> dict[str, str]:
    """Check a user's ``layer_map`` against both networks and add the other copies of each pair (target
    networks, second feature extractors), which must follow their online layer."""
    from rltransfer.sb3 import COPIES

    for target_layer, source_layer in layer_map.items():
        if target_layer not in target_groups:
            raise ConfigError(
                f"`layer_map`: `{target_layer}` is not a layer of the target agent"
                f"{did_you_mean(target_layer, target_groups)}. Its layers are: {short_list(target_groups)}."
            )
        if source_layer not in source_groups:
            raise ConfigError(
                f"`layer_map.{target_layer}`: `{source_layer}` is not a layer of the source agent"
                f"{did_you_mean(source_layer, source_groups)}. Its layers are: {short_list(source_groups)}."
            )
    pairs = dict(layer_map)
    for target_layer, source_layer in layer_map.items():
        for prefix, other in COPIES:
            if target_layer.startswith(prefix) and source_layer.startswith(prefix):
                twin_target = other + target_layer[len(prefix) :]
                twin_source = other + source_layer[len(prefix) :]
                if twin_target in target_groups and twin_source in source_groups:
                    pairs.setdefault(twin_target, twin_source)
    return pairs


def source_agent_config(source: SourceAgent) -> AgentConfig:
    """The agent a source was trained with: its run's config, else read off its weights and readable data."""
    if source.agent is not None:
        return source.agent
    algo = source.algo or "ppo"
    hidden = infer_hidden(source.state_dict, algo)
    return AgentConfig(algo=algo, policy=PolicyConfig(hidden=hidden, activation=source.activation))


def transfer(
    config: TransferConfig | str | Path | dict[str, Any] | None = None,
    *,
    progress_bar: bool = True,
    verbose: bool = True,
    resume: str | Path | None = None,
) -> TransferResult:
    """Transfer a source agent to the config's target env, freeze the named layers and fine-tune the rest.

    With a ``chain``, the agent first goes through each intermediate game in turn (transitive transfer); the
    stages are run directories under ``<run_dir>/chain/``. ``resume`` continues an interrupted transfer from its
    run directory (the same source must still exist); finished chain stages are reused, not retrained."""
    from rltransfer.io import prepare_run_dir

    if resume is not None:
        from rltransfer.training import resume_config

        config = resume_config(resume, TransferConfig)
    config = coerce_config(config, TransferConfig)
    assert isinstance(config, TransferConfig)
    check_chain(config)
    if not config.chain:  # the run directory is created once the source, mapping and freezing are known good
        return _transfer_stage(
            config,
            Path(resume) if resume is not None else None,
            config.source,
            config.trust_source,
            first=True,
            resume=resume is not None,
            progress_bar=progress_bar,
            verbose=verbose,
        )
    # a missing or unreadable source fails before the chain's run directory exists
    load_source(config.source, trust=config.trust_source)
    run_dir = Path(resume) if resume is not None else prepare_run_dir(config.log_root, config.name)
    if resume is None:  # what --resume needs if a signal stops the chain before its last stage starts
        write_text(run_dir / "config.yaml", dump_config(config))
        write_json(run_dir / "run.json", {"kind": "transfer", "status": "running", "env": config.env.id})
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
            stages.append(_run_chain_stage(stage_config, stage_dir, progress_bar, verbose))
        except Interrupted as stop:
            raise Interrupted(
                stop.signum, run_dir, "transfer", f" in chain stage {index + 1} ({stage_config.env.id})"
            ) from None
        source, trust = str(stage_dir), False
    if verbose:
        print(f"Chain stage {len(config.chain) + 1} of {len(config.chain) + 1}: {config.env.id}", flush=True)
    resumable = resume is not None and (run_dir / CHECKPOINT_DIR / "state.json").is_file()
    return _transfer_stage(
        config,
        run_dir,
        source,
        trust,
        first=False,
        resume=resumable,
        progress_bar=progress_bar,
        verbose=verbose,
        chain=stages,
    )


def check_chain(config: TransferConfig) -> None:
    """Every chain stage names a game that exists (with valid context) before anything trains."""
    from rltransfer.environment import check_env

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


def _run_chain_stage(
    config: TransferConfig, stage_dir: Path, progress_bar: bool, verbose: bool
) -> dict[str, Any]:
    """Run one intermediate stage; a stage that already finished with this exact config is reused, an
    interrupted one continues from its checkpoint."""
    record = _read_record(stage_dir)
    same = (stage_dir / "config.yaml").is_file() and (stage_dir / "config.yaml").read_text(
        encoding="utf-8"
    ) == dump_config(config)
    if same and record.get("status") == "finished" and (stage_dir / "best_model.zip").is_file():
        if verbose:
            print(f"  reusing the finished stage {stage_dir}", flush=True)
    elif (
        same
        and record.get("status") == "interrupted"
        and (stage_dir / CHECKPOINT_DIR / "state.json").is_file()
    ):
        transfer(progress_bar=progress_bar, verbose=verbose, resume=stage_dir)
    else:
        transfer(config, progress_bar=progress_bar, verbose=verbose)
    record = _read_record(stage_dir)
    return {
        "env": config.env.id,
        "run_dir": str(stage_dir),
        "budget": config.budget,
        "timesteps": record.get("timesteps"),
        "best_mean_return": record.get("best_mean_return"),
    }


def _read_record(run_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


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
) -> TransferResult:
    """One transfer: load the source, build the target agent, map, freeze and fine-tune into `run_dir` (None:
    a new run directory, made once everything before training has worked)."""
    from rltransfer.agents import build_agent
    from rltransfer.environment import make_envs, resolve_device
    from rltransfer.io import prepare_run_dir
    from rltransfer.layers import select_layers
    from rltransfer.sb3 import freeze_agent, is_target_copy, layer_copies

    source = load_source(source_path, trust=trust)
    agent = config.agent or source_agent_config(source)
    train_env, eval_env = make_envs(config.env, config.seed)
    model = build_agent(agent, train_env, seed=config.seed, device=resolve_device(config.device))
    policy = model.policy
    try:
        reinit = layer_copies(policy, select_layers(policy, config.reinit)) if config.reinit and first else []
    except LayerSelectionError as error:
        raise ConfigError(f"`reinit`: {error}") from None
    mapping = map_weights(source.state_dict, policy, reinit, config.layer_map if first else None)
    if not mapping.copied and any(info["reason"] != "asked" for info in mapping.reinitialised.values()):
        raise TransferError(
            f"No layer of the source {source.path} fits the target agent ({agent.algo} on {config.env.id}): "
            f"source layers {short_list(_describe(source.state_dict), 12)}; target layers "
            f"{short_list(_describe(policy.state_dict()), 12)}. Use the source's algorithm and hidden sizes in "
            "`agent` (or leave `agent` out to take them from the source)."
        )
    try:
        mapping.frozen = freeze_agent(model, config.freeze)
    except LayerSelectionError as error:
        raise ConfigError(f"`freeze`: {error}") from None
    # target-network copies follow SB3's target updates (exact for DQN's copies, rounding-level for Polyak)
    snapshot = {
        k: v.detach().clone()
        for k, v in policy.state_dict().items()
        if _covered(k.rpartition(".")[0], mapping.frozen) and not is_target_copy(k)
    }
    table = mapping.format()
    if verbose:
        print(f"Transfer from {source.path} to {config.env.id}:\n{table}", flush=True)
    run_dir = run_dir or prepare_run_dir(config.log_root, config.name)
    metadata: dict[str, Any] = {
        "algo": agent.algo,
        "agent": agent.model_dump(mode="json"),
        "source": str(source.path),
        "mapping": mapping.as_dict(),
    }
    if chain:
        metadata["chain"] = chain
        metadata["chain_steps"] = sum(int(stage["timesteps"] or 0) for stage in chain)
    callbacks = []
    if config.unfreeze_at is not None and mapping.frozen:
        from rltransfer.callbacks import UnfreezeAt

        callbacks.append(UnfreezeAt(mapping.frozen, config.unfreeze_at))
        snapshot = {}  # the frozen layers train in the second phase
    result = run_training(
        model,
        config,
        run_dir,
        eval_env,
        callbacks=callbacks,
        kind="transfer",
        progress_bar=progress_bar,
        metadata=metadata,
        texts={"transfer/layers": table},
        resume=resume,
    )
    current = policy.state_dict()
    unchanged = all(torch.equal(value, current[key]) for key, value in snapshot.items()) if snapshot else None
    unfrozen_at = callbacks[0].unfrozen_at if callbacks else None
    _record(run_dir, frozen_unchanged=unchanged, unfrozen_at=unfrozen_at)
    return TransferResult(**vars(result), mapping=mapping, frozen_unchanged=unchanged, chain=chain or [])


def _describe(state: dict[str, torch.Tensor]) -> list[str]:
    return [f"{k}{list(v.shape)}" for k, v in state.items() if k.endswith("weight")]


def _record(run_dir: Path, **values: Any) -> None:
    path = run_dir / "run.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record.update(values)
    write_json(path, record)
