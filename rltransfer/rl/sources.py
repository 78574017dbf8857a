"""Reading a source agent: an rltransfer run directory or an SB3 ``.zip``, weights-only by default.

Source weights are read from the ``policy.pth`` inside the SB3 ``.zip`` with PyTorch's weights-only loader: no
pickled object in the file is ever executed. The agent's architecture comes from plain data: the source run's
``config.yaml`` or ``run.json``, or the shapes of the source weights and SB3's readable ``data`` file.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.save_util import load_from_zip_file

from rltransfer.agents.builder import ACTIVATIONS
from rltransfer.agents.config import AgentConfig, PolicyConfig, parse_agent
from rltransfer.core.config import load_yaml
from rltransfer.core.errors import TransferError, short_list, unpickler_reason
from rltransfer.core.record import RECORD, RunRecord
from rltransfer.rl.hub import fetch, is_hub
from rltransfer.rl.normalization import VEC_NORMALIZE, ObservationScaling, read_scaling


@dataclass
class SourceAgent:
    """A source agent's weights and, when known, the agent config it was trained with."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    agent: AgentConfig | None = None
    algo: str | None = None
    activation: str | None = None
    scaling: ObservationScaling | None = None
    """The observation statistics of the VecNormalize it was trained under (a vec_normalize.pkl beside it)."""


def load_source(source: str | Path, trust: bool = False) -> SourceAgent:
    """Read a source agent: an rltransfer run directory, or an SB3 ``.zip`` (rltransfer's or plain SB3's).

    By default nothing in the file is unpickled: weights go through PyTorch's weights-only loader and the
    architecture comes from the weights' shapes and SB3's readable JSON. ``trust=True`` (``trust_source: true``)
    uses SB3's full loader instead, which runs the pickled objects in the file: only for files you trust, e.g. a
    source with custom policy classes the readable data cannot describe."""
    if is_hub(source):
        source = fetch(str(source))
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
    _check_weights(path, state_dict)
    _check_finite(path, state_dict)
    agent = None
    config_path = path.parent / "config.yaml"
    if (path.parent / RECORD).exists() and config_path.exists():
        raw = load_yaml(config_path)
        if "agent" in raw and isinstance(raw["agent"], dict):
            agent = parse_agent(raw["agent"], str(config_path))
        elif isinstance(resolved := RunRecord.read(path.parent).get("agent"), dict):
            # a transfer run that took its own source's agent records it in run.json
            agent = parse_agent(resolved, str(path.parent / "run.json"))
    algo = agent.algo if agent else _algo_from_data(data)
    beside = path.parent / VEC_NORMALIZE  # SB3's VecNormalize.save, as the zoo and the Hub keep it
    return SourceAgent(
        path=path,
        state_dict=state_dict,
        agent=agent,
        algo=algo,
        activation=_activation_from_data(data),
        scaling=read_scaling(beside) if beside.is_file() else None,
    )


def _check_weights(path: Path, state_dict: Any) -> None:
    """SB3 saves the policy as a mapping of tensor names to tensors; anything else is not an agent's weights."""
    if not isinstance(state_dict, dict):
        what = f"a value of type {type(state_dict).__name__}"
    else:
        wrong = next(
            ((key, value) for key, value in state_dict.items() if not isinstance(value, torch.Tensor)), None
        )
        if wrong is None and all(isinstance(key, str) for key in state_dict):
            return
        what = (
            f"a value of type {type(wrong[1]).__name__} at `{wrong[0]}`"
            if wrong is not None
            else "keys that are not tensor names"
        )
    raise TransferError(
        f"{path}: policy.pth holds {what}, not the mapping of tensor names to tensors that SB3 saves, so it is "
        "not an agent's weights. The file is damaged or was not written by SB3's model.save(...); use another "
        "model of the run or re-save the agent."
    )


def _check_finite(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TransferError(
                f"Source agent {path}: the tensor `{key}` holds NaN or infinite values, so the agent cannot be "
                "transferred (training it diverged). Use an earlier or another model of that run as the source."
            )


def _read_zip_trusted(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """SB3's own loader (unpickles the file's objects), its results put in the readable-data form used below."""
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


def _damaged(path: Path) -> TransferError:
    return TransferError(
        f"{path} is a damaged zip file (truncated or corrupt: its table of contents does not describe the file). "
        "Copy or download the agent again, re-save it with SB3's model.save(...), or point `source` at another "
        "model of the run (e.g. last_model.zip)."
    )


def _first_entry(path: Path) -> str | None:
    """The name in the zip's first local header: a zip whose table of contents lacks it lost its own table
    (truncated), and what zipfile found is a zip stored inside it (SB3's policy.pth is itself one)."""
    with open(path, "rb") as file:
        header = file.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            return None
        length = int.from_bytes(header[26:28], "little")
        return file.read(length).decode("utf-8", errors="replace")


def _read_zip(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            first = _first_entry(path)
            if first is not None and first not in names:
                raise _damaged(path)
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
    except (EOFError, zlib.error):  # an entry cut short or corrupt inside a zip whose table survived
        raise _damaged(path) from None
    try:
        state_dict = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler rejects anything but tensors and plain containers
        raise TransferError(
            f"{path}: policy.pth could not be read as plain weights ({unpickler_reason(error)}). The file is "
            "damaged or carries objects other than tensors; rltransfer does not execute them. If you trust the "
            "file and it holds custom classes, `trust_source: true` loads it with SB3's own loader."
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


def source_agent_config(source: SourceAgent) -> AgentConfig:
    """The agent a source was trained with: its run's config, else read off its weights and readable data."""
    if source.agent is not None:
        return source.agent
    algo = source.algo or "ppo"
    hidden = infer_hidden(source.state_dict, algo)
    return AgentConfig(algo=algo, policy=PolicyConfig(hidden=hidden, activation=source.activation))
