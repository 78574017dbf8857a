"""Transfer: layers copied by name and shape, mismatched ones re-initialised, freezes reaching every copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stable_baselines3 import DQN, PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rltransfer
from rltransfer.agents import build_agent
from rltransfer.agents.config import AgentConfig
from rltransfer.agents.freezing import freeze_agent, layer_copies
from rltransfer.core.errors import TransferError
from rltransfer.rl.mapping import map_weights
from rltransfer.rl.sources import load_source


def plain_sb3_source(tmp_path, env_id: str = "CartPole-v1") -> tuple[str, dict[str, torch.Tensor]]:
    model = PPO("MlpPolicy", env_id, seed=3, device="cpu", policy_kwargs={"net_arch": [16, 16]})
    path = tmp_path / "plain_sb3_agent.zip"
    model.save(path)
    return str(path), {k: v.clone() for k, v in model.policy.state_dict().items()}


@pytest.mark.slow
def test_plain_sb3_zip_is_a_source_and_frozen_layers_stay_bit_identical(tmp_path, tiny_transfer) -> None:
    path, source_state = plain_sb3_source(tmp_path)
    tiny_transfer.update(source=path, freeze=["mlp_extractor.policy_net.0", "mlp_extractor.value_net.*"])
    result = rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    assert set(result.mapping.copied) == {
        "mlp_extractor.policy_net.0",
        "mlp_extractor.policy_net.2",
        "mlp_extractor.value_net.0",
        "mlp_extractor.value_net.2",
        "action_net",
        "value_net",
    }
    assert result.mapping.reinitialised == {}
    assert result.frozen_unchanged is True
    final = PPO.load(
        result.last_model, device="cpu"
    ).policy.state_dict()  # saved while frozen, loads with plain SB3
    for key in (
        "mlp_extractor.policy_net.0.weight",
        "mlp_extractor.value_net.0.bias",
        "mlp_extractor.value_net.2.weight",
    ):
        assert torch.equal(final[key], source_state[key]), key
    assert not torch.equal(final["action_net.weight"], source_state["action_net.weight"])  # fine-tuned
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["frozen_unchanged"] is True and record["status"] == "finished"
    assert record["mapping"]["frozen"] == ["mlp_extractor.policy_net.0", "mlp_extractor.value_net"]


def test_mismatched_spaces_reinitialise_only_mismatched_layers(tmp_path) -> None:
    path, source_state = plain_sb3_source(tmp_path)  # CartPole: 4 observations, 2 actions
    source = load_source(path)
    assert source.algo == "ppo"
    env = make_vec_env("Acrobot-v1", n_envs=1, seed=0)  # 6 observations, 3 actions
    agent = AgentConfig(algo="ppo", policy={"hidden": [16, 16]})
    target = build_agent(agent, env, seed=5, device="cpu")
    fresh = {
        k: v.clone() for k, v in build_agent(agent, env, seed=5, device="cpu").policy.state_dict().items()
    }
    mapping = map_weights(source.state_dict, target.policy)
    assert set(mapping.reinitialised) == {
        "mlp_extractor.policy_net.0",
        "mlp_extractor.value_net.0",
        "action_net",
    }
    assert set(mapping.copied) == {"mlp_extractor.policy_net.2", "mlp_extractor.value_net.2", "value_net"}
    state = target.policy.state_dict()
    for layer in mapping.copied:
        assert torch.equal(state[f"{layer}.weight"], source_state[f"{layer}.weight"])
    for layer in mapping.reinitialised:  # the target's own fresh initialisation, not the source's weights
        assert torch.equal(state[f"{layer}.weight"], fresh[f"{layer}.weight"])
    assert mapping.reinitialised["action_net"]["source"] == [(2, 16), (2,)]
    table = (
        mapping.format()
    )  # CartPole's 4 observations -> Acrobot's 6: new input layers; 2 -> 3 actions: new head
    assert "re-initialised (input adapter: 4 -> 6 inputs)" in table
    assert "re-initialised (new head: 2 -> 3 outputs)" in table


def test_reinit_forces_a_fresh_head(tmp_path, tiny_transfer) -> None:
    path, source_state = plain_sb3_source(tmp_path)
    agent = {"algo": "ppo", "hyperparams": {"n_steps": 16, "batch_size": 64}, "policy": {"hidden": [16, 16]}}
    tiny_transfer.update(source=path, reinit=["action_net"], budget=256, agent=agent)
    result = rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    assert result.mapping.reinitialised["action_net"]["reason"] == "asked"


def test_freeze_reaches_target_networks_and_optimizer_holds_no_frozen_weight() -> None:
    dqn = DQN("MlpPolicy", "CartPole-v1", seed=0, device="cpu", buffer_size=100)
    frozen = freeze_agent(dqn, ["q_net.q_net.0"])
    assert frozen == ["q_net.q_net.0", "q_net_target.q_net.0"]
    assert not dqn.policy.q_net_target.q_net[0].weight.requires_grad
    in_optimizer = {id(p) for group in dqn.policy.optimizer.param_groups for p in group["params"]}
    assert id(dqn.policy.q_net.q_net[0].weight) not in in_optimizer
    assert id(dqn.policy.q_net.q_net[2].weight) in in_optimizer

    sac = SAC("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", buffer_size=100)
    frozen = freeze_agent(sac, ["critic.qf0.0", "actor.latent_pi.0"])
    assert set(frozen) == {"critic.qf0.0", "critic_target.qf0.0", "actor.latent_pi.0"}
    assert not sac.policy.critic_target.qf0[0].weight.requires_grad
    critic_params = {id(p) for g in sac.policy.critic.optimizer.param_groups for p in g["params"]}
    actor_params = {id(p) for g in sac.policy.actor.optimizer.param_groups for p in g["params"]}
    assert id(sac.policy.critic.qf0[0].weight) not in critic_params
    assert id(sac.policy.actor.latent_pi[0].weight) not in actor_params
    assert id(sac.policy.critic.qf0[2].weight) in critic_params


def test_separate_extractors_are_frozen_together() -> None:
    from stable_baselines3.common.torch_layers import FlattenExtractor

    ppo = PPO("MlpPolicy", "CartPole-v1", device="cpu", policy_kwargs={"share_features_extractor": False})
    assert isinstance(ppo.policy.vf_features_extractor, FlattenExtractor)
    assert layer_copies(ppo.policy, ["pi_features_extractor"]) == [
        "pi_features_extractor",
        "vf_features_extractor",
    ]


def test_frozen_parts_stay_in_eval_mode_through_sb3_training_mode() -> None:
    ppo = PPO("MlpPolicy", "CartPole-v1", device="cpu", seed=0)
    freeze_agent(ppo, ["mlp_extractor.policy_net"])
    ppo.policy.set_training_mode(True)
    assert ppo.policy.mlp_extractor.policy_net.training is False
    assert ppo.policy.mlp_extractor.value_net.training is True


def test_sources_that_cannot_be_used(tmp_path, tiny_transfer) -> None:
    from rltransfer.core.errors import TransferError

    with pytest.raises(TransferError, match="does not exist"):
        load_source(tmp_path / "missing.zip")
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with pytest.raises(TransferError, match="not a readable zip"):
        load_source(tmp_path / "junk.zip")
    dqn = DQN("MlpPolicy", "CartPole-v1", seed=0, device="cpu", buffer_size=100)
    dqn.save(tmp_path / "dqn.zip")
    tiny_transfer.update(source=str(tmp_path / "dqn.zip"), agent={"algo": "ppo"})
    with pytest.raises(TransferError, match="No layer of the source"):
        rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_a_truncated_or_wrongly_filled_sb3_zip_is_named_as_such(tmp_path) -> None:
    import io
    import zipfile

    from rltransfer.core.errors import TransferError

    PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu").save(tmp_path / "agent.zip")
    whole = (tmp_path / "agent.zip").read_bytes()
    for name, data in (("half.zip", whole[: len(whole) // 2]), ("tail.zip", whole[:-200])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(TransferError, match=rf"{name} is a damaged zip file \(truncated or corrupt"):
            load_source(tmp_path / name)

    def with_policy(name: str, policy: object) -> Path:
        buffer = io.BytesIO()
        torch.save(policy, buffer)
        with zipfile.ZipFile(tmp_path / "agent.zip") as original, zipfile.ZipFile(tmp_path / name, "w") as z:
            for entry in original.namelist():
                z.writestr(entry, buffer.getvalue() if entry == "policy.pth" else original.read(entry))
        return tmp_path / name

    for name, policy, what in (
        ("list.zip", [1, 2], "a value of type list"),
        ("tensor.zip", torch.zeros(3), "a value of type Tensor"),
        ("ints.zip", {"action_net.weight": 3}, "a value of type int at `action_net.weight`"),
    ):
        with pytest.raises(TransferError, match=rf"{name}: policy.pth holds {what}, not the mapping"):
            load_source(with_policy(name, policy))


def test_dqn_transfer_keeps_frozen_layer_and_its_target_copy_identical(tmp_path, tiny_transfer) -> None:
    source = DQN(
        "MlpPolicy", "CartPole-v1", seed=0, device="cpu", buffer_size=100, policy_kwargs={"net_arch": [16]}
    )
    source.q_net_target.q_net[0].weight.data.add_(1.0)  # a lagging target copy, as in any trained DQN
    source.save(tmp_path / "dqn.zip")
    frozen_weight = source.q_net.q_net[0].weight.detach().clone()
    tiny_transfer.update(
        source=str(tmp_path / "dqn.zip"),
        freeze=["q_net.q_net.0"],
        agent={
            "algo": "dqn",
            "policy": {"hidden": [16]},
            "hyperparams": {
                "learning_starts": 0,
                "buffer_size": 1000,
                "target_update_interval": 50,
                "train_freq": 4,
            },
        },
    )
    result = rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    assert result.mapping.frozen == ["q_net.q_net.0", "q_net_target.q_net.0"]
    assert result.frozen_unchanged is True
    final = DQN.load(result.last_model, device="cpu")
    assert torch.equal(final.q_net.q_net[0].weight, frozen_weight)
    assert torch.equal(final.q_net_target.q_net[0].weight, frozen_weight)
    assert not torch.equal(final.q_net.q_net[2].weight, source.q_net.q_net[2].weight)


def test_two_phase_finetuning_unfreezes_after_the_given_step(tmp_path, tiny_transfer) -> None:
    path, source_state = plain_sb3_source(tmp_path)
    agent = {
        "algo": "ppo",
        "hyperparams": {"n_steps": 32, "batch_size": 64, "n_epochs": 2},
        "policy": {"hidden": [16, 16]},
    }
    tiny_transfer.update(source=path, freeze=["mlp_extractor.policy_net.*"], unfreeze_at=256, agent=agent)
    result = rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["unfrozen_at"] == 256 and result.frozen_unchanged is None
    final = PPO.load(result.last_model, device="cpu").policy.state_dict()
    assert not torch.equal(
        final["mlp_extractor.policy_net.0.weight"], source_state["mlp_extractor.policy_net.0.weight"]
    )
    frozen = EventAccumulator(str(result.run_dir)).Reload().Scalars("params/frozen")
    assert frozen[0].value > 0 and frozen[-1].value == 0


def test_plain_a2c_zip_keeps_its_algorithm_and_activation(tmp_path) -> None:
    from stable_baselines3 import A2C

    from rltransfer.rl.sources import source_agent_config

    A2C(
        "MlpPolicy",
        "CartPole-v1",
        device="cpu",
        policy_kwargs={"net_arch": [32], "activation_fn": torch.nn.ReLU},
    ).save(tmp_path / "a2c.zip")
    agent = source_agent_config(load_source(tmp_path / "a2c.zip"))
    assert (agent.algo, agent.policy.hidden, agent.policy.activation) == ("a2c", [32], "relu")


def test_freezing_the_whole_critic_of_sac_names_the_critic() -> None:
    from rltransfer.core.errors import ConfigError

    sac = SAC("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", buffer_size=100)
    with pytest.raises(ConfigError, match="Every parameter of the critic is frozen"):
        freeze_agent(sac, ["critic"])


def test_written_files_have_the_usual_permissions(tmp_path) -> None:
    import os

    from rltransfer.core.io import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


class _Payload:
    """Pickles into a call that creates a file: what a malicious agent file would carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_payloads_in_an_agent_file_never_run(tmp_path) -> None:
    import base64
    import io
    import pickle
    import zipfile

    from rltransfer.core.errors import TransferError

    path, _ = plain_sb3_source(tmp_path)
    marker_data, marker_weights = tmp_path / "ran-from-data", tmp_path / "ran-from-weights"
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(files["data"])
    data["policy_kwargs"][":serialized:"] = base64.b64encode(
        pickle.dumps(_Payload(str(marker_data)))
    ).decode()
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    source = load_source(
        path
    )  # the readable data is parsed as JSON only; the pickled policy_kwargs never run
    assert source.state_dict and not marker_data.exists()

    buffer = io.BytesIO()
    torch.save({"mlp_extractor.policy_net.0.weight": _Payload(str(marker_weights))}, buffer)
    files["policy.pth"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    with pytest.raises(TransferError, match="could not be read as plain weights") as refused:
        load_source(path)
    assert "weights_only=False" not in str(refused.value) and "`weights_only` set to `False`" not in str(
        refused.value
    )
    assert "Unsupported global" in str(refused.value)  # what the loader objected to
    assert not marker_weights.exists()
    control = tmp_path / "ran-when-unpickled"
    pickle.loads(pickle.dumps(_Payload(str(control))))  # the payload is live: plain unpickling runs it
    assert control.exists()


def test_trust_source_opts_in_to_sb3s_full_loader(tmp_path) -> None:
    """The full loader runs what the file carries (so it is opt-in) and reads the same weights."""
    import base64
    import pickle
    import zipfile

    path, _ = plain_sb3_source(tmp_path)
    plain = load_source(path)
    trusted = load_source(path, trust=True)
    assert trusted.algo == plain.algo and trusted.activation == plain.activation
    assert all(torch.equal(trusted.state_dict[k], v) for k, v in plain.state_dict.items())
    marker = tmp_path / "ran"
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(files["data"])
    data["policy_kwargs"][":serialized:"] = base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    load_source(path)
    assert not marker.exists()  # default: never executed
    try:
        load_source(path, trust=True)
    except Exception:
        pass  # the payload replaces policy_kwargs with a file object, which SB3 then cannot use
    assert marker.exists()  # opted in: SB3's loader unpickled (and so ran) it


def test_a_source_with_nan_weights_is_refused_naming_file_and_tensor(tmp_path, tiny_transfer) -> None:
    model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs={"net_arch": [16, 16]})
    with torch.no_grad():
        model.policy.mlp_extractor.value_net[2].weight[0, 0] = float("nan")
    model.save(tmp_path / "diverged.zip")
    for trust in (False, True):
        with pytest.raises(
            TransferError, match=r"diverged.zip: the tensor `mlp_extractor.value_net.2.weight` holds NaN"
        ):
            load_source(tmp_path / "diverged.zip", trust=trust)
    tiny_transfer.update(source=str(tmp_path / "diverged.zip"))
    with pytest.raises(TransferError, match="holds NaN or infinite values"):
        rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    assert not (Path(tiny_transfer["log_root"]) / "tiny-transfer").exists()


def test_a_parameter_held_by_the_policy_itself_gets_a_named_row() -> None:
    import torch

    from rltransfer.rl.mapping import plan_mapping

    state = {
        "log_std": torch.zeros(2),
        "action_net.weight": torch.zeros(2, 4),
        "action_net.bias": torch.zeros(2),
    }
    mapping = plan_mapping(state, state)
    assert set(mapping.copied) == {"log_std", "action_net"} and "" not in mapping.copied
    wider = {**state, "log_std": torch.zeros(3)}  # another action count: log_std is re-initialised, by name
    assert plan_mapping(state, wider).reinitialised["log_std"]["target"] == [(3,)]
    assert "log_std" in plan_mapping(state, state, reinit=["log_std"]).reinitialised


def test_an_agent_section_that_only_changes_hyperparameters_keeps_the_source_network(
    tiny_source, tiny_transfer
) -> None:
    """The tiny source has [16, 16] hidden layers; SB3's default is [64, 64]. Setting only `n_steps` must still
    build (and copy into) the source's network, and a resume must build the same one."""
    tiny_transfer.update(source=str(tiny_source), agent={"hyperparams": {"n_steps": 64}})
    result = rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    assert "mlp_extractor.policy_net.0" in result.mapping.copied and not result.mapping.reinitialised
    saved = rltransfer.load_config(result.run_dir / "config.yaml", rltransfer.TransferConfig)
    assert saved.agent.policy.hidden == [16, 16] and saved.agent.hyperparams["n_steps"] == 64
    assert saved.agent.hyperparams["batch_size"] == 64  # the source's other settings are kept too
    model = PPO.load(result.best_model, device="cpu")
    assert model.n_steps == 64 and model.policy.mlp_extractor.policy_net[0].out_features == 16


def test_another_algorithm_keeps_only_the_source_network() -> None:
    from rltransfer.agents.config import inherit_agent, parse_agent

    source = parse_agent({"algo": "ppo", "hyperparams": {"n_steps": 32}, "policy": {"hidden": [16, 16]}})
    given = parse_agent({"algo": "a2c", "optimizer": {"lr": 0.001}})
    agent = inherit_agent(source, given)
    assert agent.algo == "a2c" and agent.policy.hidden == [16, 16] and agent.hyperparams == {}
    assert agent.optimizer.lr == 0.001


def test_l2sp_pulls_copied_weights_toward_the_source_and_is_exactly_zero_there(
    tiny_source, tiny_transfer
) -> None:
    """`optimizer.decay_to: source` (L2-SP): at the source's weights the penalty adds nothing to any gradient,
    bit for bit; away from them it adds weight_decay * (w - w_source); a new head gets plain L2; frozen layers
    stay out of every optimizer; the penalty survives the optimizer rebuilt when layers unfreeze."""
    from rltransfer.agents.freezing import decay_toward_source, unfreeze_agent
    from rltransfer.core.optim import source_penalty

    source = load_source(tiny_source)
    agent = AgentConfig(
        **{**source.agent.model_dump(), "optimizer": {"decay_to": "source", "weight_decay": 0.5}}
    )
    env = make_vec_env("rltransfer/CartPole-v1", n_envs=1, seed=0)
    model = build_agent(agent, env, seed=0, device="cpu")
    mapping = map_weights(source.state_dict, model.policy, reinit=["action_net"])
    frozen = freeze_agent(model, ["mlp_extractor.policy_net.0"])
    assert decay_toward_source(model, list(mapping.copied), 0.5) > 0
    optimizer = model.policy.optimizer
    assert all(group["weight_decay"] == 0 for group in optimizer.param_groups)  # the penalty replaces it
    params = dict(model.policy.named_parameters())
    for param in params.values():
        param.grad = torch.ones_like(param)
    source_penalty(optimizer)(optimizer, (), {})
    copied = params["mlp_extractor.value_net.0.weight"]
    assert torch.equal(copied.grad, torch.ones_like(copied))  # exactly zero at the source's weights
    head = params["action_net.weight"]  # re-initialised: plain L2 toward zero
    assert torch.allclose(head.grad, 1 + 0.5 * head.detach())
    assert all(
        p is not params["mlp_extractor.policy_net.0.weight"]
        for g in optimizer.param_groups
        for p in g["params"]
    )
    with torch.no_grad():
        copied.add_(0.25)
    copied.grad = torch.zeros_like(copied)
    source_penalty(optimizer)(optimizer, (), {})
    assert torch.allclose(copied.grad, torch.full_like(copied, 0.125))  # 0.5 * (w - w_source)
    unfreeze_agent(model, frozen)
    assert source_penalty(model.policy.optimizer) is source_penalty(optimizer)


def test_l2sp_in_a_transfer_run_and_refused_without_a_source(tiny_source, tiny_transfer) -> None:
    tiny_transfer.update(
        source=str(tiny_source), agent={"optimizer": {"decay_to": "source", "weight_decay": 0.01}}
    )
    result = rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    saved = rltransfer.load_config(result.run_dir / "config.yaml", rltransfer.TransferConfig)
    assert saved.agent.optimizer.decay_to == "source" and result.timesteps >= 512
    with pytest.raises(rltransfer.ConfigError, match="`rltransfer train` has no source"):
        rltransfer.load_config(
            Path(__file__).resolve().parents[1] / "configs" / "cartpole" / "source.yaml",
            rltransfer.TrainConfig,
            {"agent.optimizer.decay_to": "source"},
        )


def test_a_transfer_may_not_take_its_own_source_s_run_directory(tiny_source, tiny_transfer) -> None:
    tiny_transfer.update(source=str(tiny_source), name=tiny_source.name, log_root=str(tiny_source.parent))
    with pytest.raises(rltransfer.ConfigError, match="its own source's run directory"):
        rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    assert (tiny_source / "best_model.zip").exists()
    tiny_transfer.update(name="t", unfreeze_at=512, freeze=["mlp_extractor.policy_net.0"])
    with pytest.raises(rltransfer.ConfigError, match="`unfreeze_at` \\(512\\) is not below `budget`"):
        rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
