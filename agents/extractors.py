"""Feature extractors for image-like observations: SB3's Nature-CNN for Atari frames, a small CNN for grids.

The small CNN follows the MinAtar paper's network (one 3x3 convolution, 16 channels, then a dense layer). Its
first layer, ``features_extractor.conv``, is the *input adapter*: the only layer whose shape depends on the
observation's channel count, so a transfer between games with different channels re-initialises it and copies
the rest.
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, NatureCNN
from torch import nn

from rltransfer.core.errors import ConfigError


class SmallCNN(BaseFeaturesExtractor):
    """Conv(3x3, `channels`) + ReLU + Linear(`features_dim`) + ReLU over (C, H, W) observations."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 128, channels: int = 16) -> None:
        super().__init__(observation_space, features_dim)
        in_channels, height, width = observation_space.shape
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=3, stride=1)
        self.linear = nn.Linear(channels * (height - 2) * (width - 2), features_dim)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv(observations.float()))
        return torch.relu(self.linear(hidden.flatten(1)))


FEATURES = ("auto", "flatten", "nature_cnn", "small_cnn")


def extractor_kwargs(features: str, features_dim: int | None, observation_space: spaces.Space) -> dict:
    """SB3 ``policy_kwargs`` entries for the chosen feature extractor (``auto``: SB3's choice for the space)."""
    if features == "auto":
        if features_dim is not None:
            raise ConfigError(
                "`agent.policy.features_dim` needs `agent.policy.features` set to nature_cnn or small_cnn."
            )
        return {}
    if features == "flatten":
        return {"features_extractor_class": FlattenExtractor}
    shape = getattr(observation_space, "shape", None)
    if not isinstance(observation_space, spaces.Box) or shape is None or len(shape) != 3:
        raise ConfigError(
            f"`agent.policy.features: {features}` needs image observations of shape (channels, height, width), "
            f"but the env's observations are {observation_space}. Use `features: auto` for this env."
        )
    kwargs: dict = {"features_extractor_kwargs": {}}
    if features_dim is not None:
        kwargs["features_extractor_kwargs"]["features_dim"] = features_dim
    if features == "nature_cnn":
        kwargs["features_extractor_class"] = NatureCNN
        return kwargs
    channels, height, width = shape
    if height < 3 or width < 3 or channels > 64:
        raise ConfigError(
            f"`agent.policy.features: small_cnn` needs channel-first observations (channels, height, width) with "
            f"height and width of at least 3, but the env's shape is {shape}. Atari-sized frames need nature_cnn."
        )
    kwargs["features_extractor_class"] = SmallCNN
    return kwargs
