"""``rltransfer evaluate``: the same returns as SB3's own load + evaluate_policy, videos with a frame per step,
and clean errors for an unknown game or weights that do not fit."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import pytest
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from rltransfer.cli import main
from rltransfer.core.errors import ConfigError, TransferError
from rltransfer.rl.evaluate import evaluate


def _sb3_returns(model, env_id: str, episodes: int, seed: int) -> list[float]:
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    returns, _ = evaluate_policy(model, env, n_eval_episodes=episodes, return_episode_rewards=True)
    return [float(r) for r in returns]


def test_a_run_scores_on_its_own_game_what_sb3_scores_with_it(tiny_source: Path) -> None:
    result = evaluate(tiny_source, episodes=4, seed=3, device="cpu")
    assert result.env_id == "rltransfer/CartPole-v1"  # read from the run's config
    model = PPO.load(tiny_source / "best_model.zip", device="cpu")
    assert result.returns == _sb3_returns(model, "rltransfer/CartPole-v1", 4, seed=3)
    assert result.summary().startswith(
        f"{tiny_source / 'best_model.zip'} on rltransfer/CartPole-v1: mean return"
    )


def test_a_plain_dqn_zip_needs_its_game_named_and_then_scores_as_in_sb3(tmp_path: Path) -> None:
    model = DQN("MlpPolicy", "CartPole-v1", seed=0, device="cpu", learning_starts=0, buffer_size=500)
    model.learn(300)
    path = tmp_path / "dqn.zip"
    model.save(path)
    with pytest.raises(ConfigError, match="give it with --env ID"):
        evaluate(path)
    with pytest.raises(ConfigError, match="is a DQN agent and cannot play Pendulum-v1 .*leave out --env"):
        evaluate(path, env="Pendulum-v1", episodes=1, device="cpu")
    result = evaluate(path, env="CartPole-v1", episodes=3, seed=1, device="cpu")
    assert result.returns == _sb3_returns(DQN.load(path, device="cpu"), "CartPole-v1", 3, seed=1)


def test_video_records_every_episode_frame_by_frame(tiny_source: Path, tmp_path: Path, capsys) -> None:
    videos = tmp_path / "videos"
    code = main(["evaluate", str(tiny_source), "--episodes", "2", "--video", str(videos), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "over 2 episodes" in printed and "Videos:" in printed
    lengths = evaluate(tiny_source, episodes=2, device="cpu").lengths  # same seed, same episodes
    files = sorted(videos.glob("*.mp4"))
    assert [path.name for path in files] == ["rl-video-episode-0.mp4", "rl-video-episode-1.mp4"]
    frames = [imageio_ffmpeg.count_frames_and_secs(str(path))[0] for path in files]
    # RecordVideo keeps the reset frame and one per step; the MP4 encoder may drop the last one on rounding
    assert all(length <= count <= length + 1 for count, length in zip(frames, lengths, strict=True)), (
        frames,
        lengths,
    )


def test_weights_that_do_not_fit_the_game_name_the_tensor(tiny_source: Path, capsys) -> None:
    with pytest.raises(TransferError, match=r"mlp_extractor.policy_net.0.weight is \[16, 4\] in the agent"):
        evaluate(tiny_source, env="rltransfer/Acrobot-v1", episodes=1, device="cpu")
    assert main(["evaluate", str(tiny_source), "--env", "NoSuchGame-v0"]) == 2
    error = capsys.readouterr().err
    assert (
        "`--env` 'NoSuchGame-v0' is not a registered gymnasium environment" in error
        and "Traceback" not in error
    )


def test_evaluate_refuses_bad_arguments_and_never_mixes_videos(tiny_source: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        evaluate(tiny_source, episodes=1, video_dir=tmp_path / "afile")
    with pytest.raises(ConfigError, match="--device 'gpu'"):
        evaluate(tiny_source, episodes=1, device="gpu")
    for seed in (-1, 2**32):
        with pytest.raises(
            ConfigError, match=rf"--seed must be an integer from 0 to 2\*\*32 - 1 .*got {seed}\."
        ):
            evaluate(tiny_source, episodes=1, seed=seed)
    evaluate(tiny_source, episodes=1, video_dir=tmp_path / "videos", device="cpu")
    with pytest.raises(ConfigError, match="already holds videos of an earlier evaluation"):
        evaluate(tiny_source, episodes=1, video_dir=tmp_path / "videos", device="cpu")
