"""Freeze / unfreeze / list / replace_head on an SB3 policy and on a small CNN with BatchNorm and dropout."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3 import DQN, PPO
from torch import nn

import rltransfer
from rltransfer import LayerSelectionError, build_optimizer, freeze, list_layers, replace_head, unfreeze


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def ppo_policy() -> nn.Module:
    return PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu").policy


def test_list_layers_names_shapes_and_state() -> None:
    model = small_cnn()
    freeze(model, "0")
    infos = {info.name: info for info in list_layers(model, torch.zeros(2, 1, 8, 8))}
    assert list(infos) == ["0", "1", "5", "7"]
    assert infos["0"].param_shapes == {"weight": (4, 1, 3, 3), "bias": (4,)}
    assert infos["0"].num_params == 40 and not infos["0"].trainable
    assert infos["5"].trainable and infos["5"].output_shape == (2, 16)
    assert "frozen" in rltransfer.core.layers.format_layers(list(infos.values()))


def test_freeze_by_name_glob_and_up_to_on_sb3_policy() -> None:
    policy = ppo_policy()
    freeze(policy, "mlp_extractor.policy_net.*")
    assert rltransfer.frozen_layers(policy) == ["mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2"]
    assert all(not p.requires_grad for p in policy.mlp_extractor.policy_net.parameters())
    assert all(p.requires_grad for p in policy.mlp_extractor.value_net.parameters())
    unfreeze(policy)
    assert all(p.requires_grad for p in policy.parameters())
    names = freeze(policy, "up_to:mlp_extractor.policy_net.2")
    assert rltransfer.frozen_layers(policy) == ["mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2"]
    assert "mlp_extractor.value_net" not in names
    unfreeze(policy)
    assert freeze(policy, ["action_net"]) == ["action_net"]
    assert rltransfer.frozen_layers(policy) == ["action_net"]


def test_pattern_matching_nothing_lists_the_layers() -> None:
    policy = ppo_policy()
    with pytest.raises(LayerSelectionError) as error:
        freeze(policy, "mlp_extractor.polcy_net.*")
    message = str(error.value)
    assert "mlp_extractor.polcy_net.*" in message
    assert "mlp_extractor.policy_net.0" in message and "action_net" in message
    with pytest.raises(LayerSelectionError, match="up_to:nope"):
        freeze(policy, "up_to:nope")


def test_frozen_modules_stay_in_eval_mode_after_train() -> None:
    model = small_cnn()
    freeze(model, "up_to:3")  # conv, batchnorm, relu, dropout
    model.train()
    assert model[0].training is False and model[1].training is False and model[3].training is False
    assert model[5].training is True
    stats = model[1].running_mean.clone(), model[1].running_var.clone()
    x = torch.randn(8, 1, 8, 8)
    model(x)
    assert torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])
    trunk = nn.Sequential(*list(model)[:5])
    assert torch.equal(trunk(x), trunk(x))  # dropout inside the frozen part is off
    # forcing the flag back on does not escape either: the pre-forward hook restores eval mode
    model[1].training = True
    model(x)
    assert model[1].training is False and torch.equal(model[1].running_mean, stats[0])


def test_unfreeze_inside_frozen_parent_follows_model_mode() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), nn.Linear(2, 1))
    freeze(model, "0")
    unfreeze(model, "0.1")
    model.train()
    assert model[0][1].training is True and model[0][0].training is False
    assert model[0][1].weight.requires_grad and not model[0][0].weight.requires_grad


def test_frozen_weights_bit_identical_after_finetuning_with_momentum_and_decay() -> None:
    model = small_cnn()
    freeze(model, ["0", "1"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, "sgd", 0.1, momentum=0.9, weight_decay=0.1, l1=0.01)
    frozen_ids = {id(p) for p in list(model[0].parameters()) + list(model[1].parameters())}
    assert not any(id(p) in frozen_ids for group in optimizer.param_groups for p in group["params"])
    model.train()
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(8, 1, 8, 8)).pow(2).mean().backward()
        optimizer.step()
    after = model.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["7.weight"], after["7.weight"])


def test_l1_penalty_adds_sign_of_weights_to_gradients() -> None:
    layer = nn.Linear(3, 2)
    optimizer = build_optimizer(layer, "sgd", 1.0, l1=0.5)
    weight_before = layer.weight.detach().clone()
    bias_before = layer.bias.detach().clone()
    layer.weight.grad = torch.zeros_like(layer.weight)
    layer.bias.grad = torch.zeros_like(layer.bias)
    optimizer.step()
    assert torch.allclose(layer.weight, weight_before - 0.5 * torch.sign(weight_before))
    assert torch.equal(layer.bias, bias_before)  # biases carry no penalty


def test_replace_head_puts_fresh_layer_of_new_size() -> None:
    model = small_cnn()
    old = model[7]
    new = replace_head(model, 5, example_input=torch.zeros(1, 1, 8, 8))
    assert model[7] is new and new.out_features == 5 and new.in_features == old.in_features
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 5)


def test_after_freezing_everything_only_the_replaced_head_trains() -> None:
    """PyTorch's convention: a new module trains. `freeze(model, "*")` reaches the parameters the model holds
    itself (a ViT's class_token), and the head replaced afterwards learns while everything else stays
    bit-identical."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8
    )
    freeze(model, "*")
    assert not any(p.requires_grad for p in model.parameters())  # class_token included
    head = replace_head(model, 3, example_input=torch.zeros(1, 3, 32, 32))
    assert rltransfer.find_head(model) == "heads.head" and head.weight.requires_grad
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    assert (
        head.training and not model.encoder.training
    )  # the new head follows the model's mode, the rest stays in eval
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"heads.head.weight", "heads.head.bias"}


def test_freezing_part_of_a_model_leaves_its_own_parameters_trainable() -> None:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8
    )
    freeze(model, "encoder")
    assert model.class_token.requires_grad and model.conv_proj.weight.requires_grad


def test_find_head_on_sb3_policies_and_bad_name() -> None:
    assert rltransfer.find_head(ppo_policy()) == "action_net"
    dqn = DQN("MlpPolicy", "CartPole-v1", seed=0, device="cpu", learning_starts=0, buffer_size=100)
    assert rltransfer.find_head(dqn.policy) == "q_net.q_net.4"
    policy = ppo_policy()
    replace_head(policy, 3)
    assert policy.action_net.out_features == 3
    with pytest.raises(LayerSelectionError, match="value_nt"):
        replace_head(policy, 3, name="value_nt")


def test_unfreezing_deep_inside_a_frozen_parent_keeps_the_rest_frozen_and_in_eval() -> None:
    model = nn.Sequential(nn.Sequential(nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2)), nn.Linear(2, 2)))
    freeze(model, "0")
    unfreeze(model, "0.0.1")
    model.train()
    assert model[0][0][0].training is False and not model[0][0][0].weight.requires_grad
    assert model[0][1].training is False and not model[0][1].weight.requires_grad
    assert model[0][0][1].training is True and model[0][0][1].weight.requires_grad


def test_selecting_every_child_does_not_freeze_the_parents_own_parameters() -> None:
    class WithScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2))
            self.lin = nn.Linear(2, 2)

    model = nn.Sequential(WithScale())
    assert freeze(model, "0.lin") == ["0.lin"]
    assert model[0].scale.requires_grad


def test_frozen_models_still_pickle(tmp_path) -> None:
    model = small_cnn()
    freeze(model, "up_to:1")
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    loaded.train()
    assert loaded[1].training is False and loaded[5].training is True


def test_a_typo_hint_only_suggests_layers_that_can_be_selected() -> None:
    policy = ppo_policy()
    # policy_net.1 is a Tanh: close in spelling to policy_net.3, but it holds no parameters, so never a suggestion
    with pytest.raises(LayerSelectionError) as error:
        rltransfer.select_layers(policy, ["mlp_extractor.policy_net.3"])
    assert "did you mean `mlp_extractor.policy_net.1`" not in str(error.value)
    assert "did you mean `mlp_extractor.policy_net." in str(error.value)  # .0 or .2, both hold weights
    with pytest.raises(LayerSelectionError, match="did you mean `up_to:mlp_extractor.policy_net.2`"):
        rltransfer.select_layers(policy, ["up_to:mlp_extractor.policy_net.22"])
