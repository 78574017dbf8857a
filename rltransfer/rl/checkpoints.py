"""Resumable SB3 agents mid-training: weights, optimizers, replay buffer, counters and callback state, in files
read back weights-only, each checked against the digest recorded beside it."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from rltransfer.agents.freezing import optimizer_slots
from rltransfer.core.errors import ConfigError
from rltransfer.core.io import atomic_path, write_json
from rltransfer.core.record import CHECKPOINT_DIR
from rltransfer.core.state import cpu_copy, digest, rng_state, set_rng_state

_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _optimizers(model: BaseAlgorithm) -> dict[str, torch.optim.Optimizer]:
    found = {slot.label: getattr(slot.owner, slot.attribute) for slot in optimizer_slots(model)}
    if getattr(model, "ent_coef_optimizer", None) is not None:  # SAC's automatic entropy coefficient
        found["ent_coef"] = model.ent_coef_optimizer
    return found


def save_agent_checkpoint(
    model: BaseAlgorithm, run_dir: Path, callbacks: dict[str, Any], *, with_buffer: bool = True
) -> Path:
    """Write ``run_dir/checkpoint/``: a state file (weights, optimizers, RNG) and, for off-policy agents, a replay
    buffer file, each under a name of its own, then ``state.json`` (counters, callback state, the files' names and
    digests) replaces the previous one in one rename, and only then are the previous files deleted: a crash at any
    moment leaves either the old checkpoint or the new one, whole.

    ``with_buffer=False`` keeps the replay buffer file of the previous checkpoint (when there is one) instead of
    writing the buffer again: at Atari scale it is gigabytes, so it is written less often than the weights, and a
    run resumed from such a checkpoint continues with the buffer as it was when last written."""
    folder = run_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    token = f"{int(model.num_timesteps)}-{secrets.token_hex(4)}"
    tensors = {
        "policy": cpu_copy(model.policy.state_dict()),
        "optimizers": {name: cpu_copy(opt.state_dict()) for name, opt in _optimizers(model).items()},
        "log_ent_coef": cpu_copy(getattr(model, "log_ent_coef", None)),
        "rng": rng_state(),
    }
    files = {}
    with atomic_path(folder / f"state-{token}.pt", suffix=".pt") as tmp:
        torch.save(tensors, tmp)
    files["state"] = [f"state-{token}.pt", digest(folder / f"state-{token}.pt")]
    buffer = getattr(model, "replay_buffer", None)
    kept = None if with_buffer or buffer is None else _previous_buffer(folder)
    if kept is not None:
        files["replay_buffer"] = kept
    elif buffer is not None:
        arrays = {
            name: getattr(buffer, name) for name in _BUFFER_FIELDS if getattr(buffer, name, None) is not None
        }
        arrays["position"] = np.asarray([buffer.pos, int(buffer.full)])
        name = f"replay_buffer-{token}.npz"
        with atomic_path(folder / name, suffix=".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        files["replay_buffer"] = [name, digest(folder / name)]
    write_json(
        folder / "state.json",
        {
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(getattr(model, "_n_updates", 0)),
            "episode_num": int(getattr(model, "_episode_num", 0)),
            "n_calls": int(getattr(model, "_n_calls", 0)),  # DQN: schedules its target-network updates
            "callbacks": callbacks,
            "files": files,
        },
    )
    keep = {name for name, _ in files.values()} | {"state.json"}
    for path in folder.iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink(missing_ok=True)
    return folder


def _previous_buffer(folder: Path) -> list[str] | None:
    """The replay buffer entry (file name, digest) of the checkpoint in `folder`, if it has one that is whole."""
    try:
        entry = json.loads((folder / "state.json").read_text(encoding="utf-8"))["files"]["replay_buffer"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return list(entry) if (folder / entry[0]).is_file() else None


def read_agent_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint's plain state (state.json), every file checked against its digest first."""
    folder = run_dir / CHECKPOINT_DIR
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{run_dir} has no checkpoint to resume ({folder / 'state.json'} is missing): the run finished, or "
            "stopped before its first evaluation. Start it again without --resume."
        ) from None
    except ValueError as error:
        raise ConfigError(
            f"{folder / 'state.json'} is truncated or damaged ({error}); start the run again."
        ) from None
    for name, expected in state.get("files", {}).values():
        path = folder / name
        if not path.is_file() or digest(path) != expected:
            raise ConfigError(
                f"Checkpoint file {path} is missing, truncated or was changed after it was written (its digest "
                "does not match state.json); the run cannot resume from it. Start it again without --resume."
            )
    state["folder"] = folder
    return state


def load_agent_checkpoint(model: BaseAlgorithm, state: dict[str, Any]) -> None:
    """Put a checkpoint's weights, optimizer states, replay buffer, counters and RNG into a freshly built agent
    whose layers are frozen as they were when it was saved."""
    folder: Path = state["folder"]
    files = state["files"]
    # loaded on the CPU (the RNG states must stay there); load_state_dict moves weights to the agent's device
    tensors = torch.load(folder / files["state"][0], map_location="cpu", weights_only=True)
    model.policy.load_state_dict(tensors["policy"])
    optimizers = _optimizers(model)
    for name, saved in tensors["optimizers"].items():
        optimizers[name].load_state_dict(saved)
    if tensors.get("log_ent_coef") is not None:
        with torch.no_grad():
            model.log_ent_coef.copy_(tensors["log_ent_coef"])
    if "replay_buffer" in files:
        buffer = model.replay_buffer
        with np.load(folder / files["replay_buffer"][0], allow_pickle=False) as arrays:
            for name in _BUFFER_FIELDS:
                if name in arrays:
                    getattr(buffer, name)[...] = arrays[name]
            buffer.pos, buffer.full = int(arrays["position"][0]), bool(arrays["position"][1])
    model.num_timesteps = state["num_timesteps"]
    model._n_updates = state["n_updates"]
    model._episode_num = state["episode_num"]
    if hasattr(model, "_n_calls"):
        model._n_calls = state.get("n_calls", 0)
    set_rng_state(tensors["rng"])
