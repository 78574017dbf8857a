"""Source agents' trunks side by side: their bottleneck features concatenated under one new head.

Model concatenation for agents: each trunk is a source policy's feature extractor and its hidden layers up to
(not including) the output layer, that is the actor's latent for PPO, A2C and SAC, the last hidden layer of the
Q-network for DQN and of the actor for TD3. A source trained under VecNormalize keeps its observation statistics
fixed inside its trunk, so each trunk sees the observations as its source did. :class:`SourceTrunks` is an SB3
feature extractor built from plain data (:class:`~rltransfer.agents.config.TrunkSpec`), so a saved agent that
uses it is rebuilt and evaluated like any other.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn

from rltransfer.agents.config import TrunkSpec
from rltransfer.agents.extractors import SmallCNN
from rltransfer.core.errors import TransferError

# where each algorithm keeps the policy's feature extractor and the hidden layers that read its output
_ACTOR = {
    "ppo": (("pi_features_extractor.", "features_extractor."), "mlp_extractor.policy_net.", False),
    "a2c": (("pi_features_extractor.", "features_extractor."), "mlp_extractor.policy_net.", False),
    "dqn": (("q_net.features_extractor.",), "q_net.q_net.", True),
    "sac": (("actor.features_extractor.",), "actor.latent_pi.", False),
    "td3": (("actor.features_extractor.",), "actor.mu.", True),
}
"""algo: (extractor prefixes in order of preference, hidden-layer prefix, whether its last Linear is the output)."""
DEFAULT_ACTIVATION = {"ppo": "tanh", "a2c": "tanh", "dqn": "relu", "sac": "relu", "td3": "relu"}


class SourceTrunk(nn.Module):
    """One source's trunk: its observation statistics (when it had them), feature extractor and hidden layers."""

    def __init__(self, observation_space: spaces.Box, spec: TrunkSpec) -> None:
        from rltransfer.agents.builder import ACTIVATIONS

        super().__init__()
        self.spec = spec
        shape = tuple(observation_space.shape or ())
        if spec.scaled:  # VecNormalize's (obs - mean) / sqrt(var + eps), clipped
            self.register_buffer("obs_mean", torch.zeros(shape))
            self.register_buffer("obs_var", torch.ones(shape))
        extra = {} if spec.features_dim is None else {"features_dim": spec.features_dim}
        if spec.features == "nature_cnn":
            self.extractor: nn.Module = NatureCNN(observation_space, **extra)
            width = self.extractor.features_dim
        elif spec.features == "small_cnn":
            self.extractor = SmallCNN(observation_space, **extra)
            width = self.extractor.features_dim
        else:
            self.extractor = nn.Flatten()
            width = math.prod(shape)
        self.layers = nn.ModuleList()  # not a Sequential: dropout is never inserted into a frozen trunk
        for size in spec.hidden:
            self.layers.append(nn.Linear(width, size))
            width = size
        self.activation = ACTIVATIONS[spec.activation]()
        self.features_dim = width

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        features = observations.float()
        if self.spec.scaled:
            features = (features - self.obs_mean) / torch.sqrt(self.obs_var + self.spec.epsilon)
            features = features.clamp(-self.spec.clip, self.spec.clip)
        features = self.extractor(features)
        for layer in self.layers:
            features = self.activation(layer(features))
        return features


class SourceTrunks(BaseFeaturesExtractor):
    """Several source trunks over the same observations; the policy's own layers read their concatenation."""

    def __init__(self, observation_space: spaces.Box, trunks: list[dict[str, Any]]) -> None:
        built = [SourceTrunk(observation_space, TrunkSpec(**spec)) for spec in trunks]
        super().__init__(observation_space, sum(trunk.features_dim for trunk in built))
        self.trunks = nn.ModuleList(built)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.cat([trunk(observations) for trunk in self.trunks], dim=1)


def source_trunk(
    state_dict: dict[str, torch.Tensor],
    algo: str,
    activation: str | None,
    scaling: Any = None,
    name: str = "the source",
) -> tuple[TrunkSpec, dict[str, torch.Tensor]]:
    """The trunk of a source agent's weights: its spec and its state dict (keys of :class:`SourceTrunk`).
    `scaling` is the source's :class:`~rltransfer.rl.normalization.ObservationScaling` (or None)."""
    if algo not in _ACTOR:
        raise TransferError(f"{name} is a {algo} agent; trunks can be taken from {', '.join(_ACTOR)} agents.")
    if any(key.startswith(prefix + "trunks.") for key in state_dict for prefix in _ACTOR[algo][0]):
        raise TransferError(
            f"{name} already combines several trunks. Combine the agents it was built from instead (its run's "
            "config.yaml names them)."
        )
    prefixes, hidden_prefix, drop_last = _ACTOR[algo]
    extractor_prefix = next(
        (p for p in prefixes if any(key.startswith(p) for key in state_dict)), prefixes[-1]
    )
    state: dict[str, torch.Tensor] = {}
    extractor = {
        k[len(extractor_prefix) :]: v for k, v in state_dict.items() if k.startswith(extractor_prefix)
    }
    if "conv.weight" in extractor:
        features = "small_cnn"
    elif "cnn.0.weight" in extractor:
        features = "nature_cnn"
    elif extractor:
        raise TransferError(
            f"{name}'s feature extractor ({', '.join(sorted(extractor)[:4])}, ...) is neither rltransfer's small "
            "CNN nor SB3's Nature-CNN, so its trunk cannot be rebuilt from its weights."
        )
    else:
        features = "flatten"
    state.update({f"extractor.{key}": value for key, value in extractor.items()})
    features_dim = int(extractor["linear.weight" if features == "small_cnn" else "linear.0.weight"].shape[0]) if (
        extractor
    ) else None  # fmt: skip
    pattern = re.compile(re.escape(hidden_prefix) + r"(\d+)\.(weight|bias)$")
    linears: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if match := pattern.match(key):
            linears.setdefault(int(match.group(1)), {})[match.group(2)] = value
    ordered = [
        linears[index] for index in sorted(linears) if linears[index].get("weight", torch.empty(0)).dim() == 2
    ]
    if drop_last:
        ordered = ordered[:-1]
    if not ordered and features == "flatten":
        raise TransferError(
            f"{name} has no hidden layers before its output layer, so it has no trunk to share (its features "
            "would be the raw observations). Combine agents with hidden layers."
        )
    for index, layer in enumerate(ordered):
        state.update({f"layers.{index}.{part}": value for part, value in layer.items()})
    if scaling is not None:
        state["obs_mean"] = torch.as_tensor(scaling.mean, dtype=torch.float32)
        state["obs_var"] = torch.as_tensor(scaling.var, dtype=torch.float32)
    spec = TrunkSpec(
        features=features,
        features_dim=features_dim,
        hidden=[int(layer["weight"].shape[0]) for layer in ordered],
        activation=activation or DEFAULT_ACTIVATION[algo],
        scaled=scaling is not None,
        clip=float(scaling.clip_obs) if scaling is not None else 10.0,
        epsilon=float(scaling.epsilon) if scaling is not None else 1e-8,
    )
    return spec, state


def trunk_modules(policy: nn.Module) -> dict[str, SourceTrunks]:
    """Every :class:`SourceTrunks` in a policy by module name (an actor's, a critic's, a target network's)."""
    return {
        name: module
        for name, module in policy.named_modules(remove_duplicate=False)
        if isinstance(module, SourceTrunks)
    }


def load_trunks(policy: nn.Module, states: list[dict[str, torch.Tensor]], names: list[str]) -> list[str]:
    """Put each source's trunk weights into every :class:`SourceTrunks` of `policy`; returns the module names
    that hold them. A trunk that does not fit the target's observations is an error naming its source."""
    found = trunk_modules(policy)
    if not found:
        raise TransferError("The target agent has no combined trunks to load the sources' weights into.")
    for module in found.values():
        for trunk, state, name in zip(module.trunks, states, names, strict=True):
            check_loads(trunk, state, name, policy.observation_space)
    return list(found)


def check_loads(
    trunk: SourceTrunk, state: dict[str, torch.Tensor], name: str, observation_space: Any
) -> None:
    """Load a trunk's weights, or say which source does not fit the target's observations."""
    try:
        trunk.load_state_dict(state)
    except RuntimeError as error:
        shapes = "; ".join(line.strip() for line in str(error).splitlines()[1:4])
        raise TransferError(
            f"The trunk of {name} does not fit the target's observations {observation_space}: {shapes}. "
            "Combine sources trained on observations of the target's shape."
        ) from None
