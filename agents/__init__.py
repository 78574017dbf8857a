"""Agent and policy builders: SB3 algorithms configured from YAML, with dropout and optimizer choices."""

from rltransfer.agents.algorithms import ALGORITHMS, AlgorithmSpec, ConsistentA2C, ConsistentPPO
from rltransfer.agents.builder import ACTIVATIONS, build_agent, optimizer_settings, policy_kwargs, policy_name
from rltransfer.agents.dropout import MaskBank, MaskedDropout, add_dropout, dropout_layers
from rltransfer.agents.extractors import FEATURES, SmallCNN, extractor_kwargs

__all__ = [
    "ACTIVATIONS",
    "ALGORITHMS",
    "FEATURES",
    "AlgorithmSpec",
    "ConsistentA2C",
    "ConsistentPPO",
    "MaskBank",
    "MaskedDropout",
    "SmallCNN",
    "add_dropout",
    "build_agent",
    "dropout_layers",
    "extractor_kwargs",
    "optimizer_settings",
    "policy_kwargs",
    "policy_name",
]
