"""Sources from the Hugging Face Hub's cache (offline: the test writes an SB3 zip and its vec_normalize.pkl in the
library's real cache layout), their observation scaling read without running pickled code and applied."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

import rltransfer
from rltransfer.core.errors import ConfigError, TransferError
from rltransfer.rl.evaluate import evaluate
from rltransfer.rl.normalization import read_scaling

hub = pytest.importorskip("huggingface_hub", reason="the hub extra is part of the test install (see README)")

REPO = "testorg/ppo-CartPole-v1"
COMMIT = "1234567890abcdef1234567890abcdef12345678"


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache this process reads, offline (no request leaves the machine)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _snapshot(cache: Path, repo: str = REPO) -> Path:
    """The folder hf_hub_download resolves for `repo` at `main`: models--ORG--NAME/snapshots/<commit>/."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def zoo_agent(offline_cache: Path) -> Path:
    """A PPO agent trained under VecNormalize, saved as the zoo and the Hub keep it, in the Hub cache."""
    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0), norm_reward=True)
    model = PPO(
        "MlpPolicy", env, seed=0, device="cpu", n_steps=64, batch_size=64, policy_kwargs={"net_arch": [16]}
    )
    model.learn(512)
    snapshot = _snapshot(offline_cache)
    model.save(snapshot / "ppo-CartPole-v1.zip")
    env.save(str(snapshot / "vec_normalize.pkl"))
    return snapshot


def test_a_hub_source_scores_what_sb3_scores_with_its_vec_normalize(zoo_agent: Path) -> None:
    ours = evaluate(f"hf://{REPO}", env="CartPole-v1", episodes=5, seed=7, device="cpu")
    env = VecNormalize.load(
        str(zoo_agent / "vec_normalize.pkl"), make_vec_env("CartPole-v1", n_envs=1, seed=7)
    )
    env.training, env.norm_reward = False, False
    model = PPO.load(zoo_agent / "ppo-CartPole-v1.zip", device="cpu")
    theirs, _ = evaluate_policy(model, env, n_eval_episodes=5, return_episode_rewards=True)
    assert ours.returns == [float(r) for r in theirs]
    # without the scaling the same weights play another game: the statistics really were applied
    scaling = read_scaling(zoo_agent / "vec_normalize.pkl")
    assert not np.allclose(scaling.var, 1.0)


def test_a_hub_source_transfers_with_its_scaling_fixed_on_the_target(zoo_agent: Path, tiny_transfer) -> None:
    tiny_transfer.update(source=f"hf://{REPO}/ppo-CartPole-v1.zip", agent={"hyperparams": {"n_steps": 32}})
    result = rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    record = rltransfer.load_source(result.run_dir)  # the run is a source with the same scaling
    assert record.scaling is not None and np.array_equal(
        record.scaling.mean, read_scaling(zoo_agent / "vec_normalize.pkl").mean
    )
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["observation_scaling"].endswith("vec_normalize.pkl")


def test_scaling_for_another_observation_shape_is_dropped_with_a_warning(zoo_agent: Path, tmp_path) -> None:
    with pytest.warns(
        UserWarning, match=r"observations of shape \(4,\), but rltransfer/Acrobot-v1 has \(6,\)"
    ):
        with pytest.raises(TransferError):  # (and the weights themselves do not fit Acrobot either)
            evaluate(f"hf://{REPO}", env="rltransfer/Acrobot-v1", episodes=1, device="cpu")


def test_a_vec_normalize_file_with_code_in_it_is_refused_not_run(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "vec_normalize.pkl"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(TransferError, match="posix.system is not something a VecNormalize file holds"):
        read_scaling(path)
    assert not (tmp_path / "pwned").exists()


def test_hub_sources_missing_from_the_offline_cache_or_misnamed_fail_in_words(offline_cache: Path) -> None:
    with pytest.raises(
        TransferError, match="Cannot get ppo-Nothing.zip of testorg/ppo-Nothing from the Hugging Face Hub"
    ):
        rltransfer.load_source("hf://testorg/ppo-Nothing")
    with pytest.raises(ConfigError, match="a Hub source is hf://ORG/REPO"):
        rltransfer.load_source("hf://justaname")
