"""SB3 runs: Ctrl-C / SIGTERM checkpoint and --resume, checkpoints of every algorithm round-trip exactly, damaged
checkpoints are refused, NaN parameters stop a run, and a kill during a save leaves the old file whole."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from rltransfer.core.config import parse_config
from rltransfer.core.errors import ConfigError, NumericalError
from rltransfer.core.interrupt import Interrupted
from rltransfer.rl import callbacks
from rltransfer.rl.checkpoints import load_agent_checkpoint, read_agent_checkpoint, save_agent_checkpoint
from rltransfer.rl.config import TrainConfig
from rltransfer.rl.training import train


def state_file(run: Path) -> Path:
    """The weights-and-optimizers file of a run's checkpoint, as its state.json names it."""
    folder = run / "checkpoint"
    return folder / json.loads((folder / "state.json").read_text())["files"]["state"][0]


def stop_after(monkeypatch: pytest.MonkeyPatch, calls: int, signum: int = signal.SIGINT) -> None:
    """Make the training loop see a stop request at its `calls`-th check (one check per vectorised step)."""
    seen = []

    def fake() -> int | None:
        seen.append(1)
        return signum if len(seen) >= calls else None

    monkeypatch.setattr(callbacks, "stop_requested", fake)


def eval_steps(run: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return sorted(e.step for e in EventAccumulator(str(run)).Reload().Scalars("eval/mean_reward"))


def test_train_interrupt_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_train: dict
) -> None:
    stop_after(monkeypatch, 80)  # 4 envs: step 320, after the evaluation at 256
    with pytest.raises(
        Interrupted, match=r"Stopped by SIGINT at step 320.*rltransfer train --resume"
    ) as stop:
        train(tiny_train, progress_bar=False)
    run = Path(tiny_train["log_root"]) / "tiny-source"
    assert stop.value.exit_code == 130
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["num_timesteps"] == 320 and state["callbacks"]["evaluation"]["curve"][-1]["step"] == 256
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    saved = torch.load(state_file(run), weights_only=True)["policy"]
    monkeypatch.setattr(callbacks, "stop_requested", lambda: None)
    result = train(resume=run, progress_bar=False)
    assert result.timesteps >= 512 and [p["step"] for p in result.curve] == [0, 256, 512]
    assert eval_steps(run) == [0, 256, 512]  # TensorBoard's curve continues; no second step-0 evaluation
    assert json.loads((run / "run.json").read_text())["resumed_from"] == 320
    assert not (run / "checkpoint").exists() and (run / "progress.before-resume-1.csv").is_file()
    assert not all(torch.equal(v, result.load_best().policy.state_dict()[k]) for k, v in saved.items())
    with pytest.raises(ConfigError, match="already finished"):
        train(resume=run, progress_bar=False)


@pytest.mark.parametrize(
    ("algo", "env_id", "hyperparams"),
    [
        ("ppo", "CartPole-v1", {"n_steps": 32, "batch_size": 32, "n_epochs": 1}),
        ("dqn", "CartPole-v1", {"learning_starts": 50, "buffer_size": 500, "train_freq": 4}),
        ("sac", "Pendulum-v1", {"learning_starts": 50, "buffer_size": 500}),
        ("td3", "Pendulum-v1", {"learning_starts": 50, "buffer_size": 500}),
    ],
)
def test_checkpoint_round_trip_for_every_algorithm(
    tmp_path: Path, algo: str, env_id: str, hyperparams: dict
) -> None:
    from rltransfer.agents import build_agent
    from rltransfer.agents.config import AgentConfig
    from rltransfer.rl.environment import make_envs

    config = parse_config(
        {
            "name": "x",
            "budget": 300,
            "env": {"id": env_id, "n_envs": 1},
            "eval": {"every": 300},
            "agent": {"algo": algo, "hyperparams": hyperparams, "policy": {"hidden": [16]}},
        },
        TrainConfig,
    )
    agent: AgentConfig = config.agent
    model = build_agent(agent, make_envs(config.env, 0)[0], seed=0, device="cpu")
    model.learn(160)
    save_agent_checkpoint(model, tmp_path, {"evaluation": {}})
    expected_rng = torch.rand(3)
    fresh = build_agent(agent, make_envs(config.env, 1)[0], seed=1, device="cpu")
    load_agent_checkpoint(fresh, read_agent_checkpoint(tmp_path))
    assert torch.equal(torch.rand(3), expected_rng)  # the random streams continue where they were saved
    assert fresh.num_timesteps == model.num_timesteps == 160
    for key, value in model.policy.state_dict().items():
        assert torch.equal(value, fresh.policy.state_dict()[key]), key
    from rltransfer.rl.checkpoints import _optimizers

    for name, optimizer in _optimizers(model).items():
        assert str(optimizer.state_dict()) == str(_optimizers(fresh)[name].state_dict()), name
    if algo in ("dqn", "sac", "td3"):
        assert fresh.replay_buffer.pos == model.replay_buffer.pos
        assert np.array_equal(fresh.replay_buffer.observations, model.replay_buffer.observations)
    if algo == "sac":
        assert torch.equal(fresh.log_ent_coef, model.log_ent_coef)


def test_transfer_with_frozen_layers_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_source: Path, tiny_transfer: dict
) -> None:
    from rltransfer.rl.transfer import transfer

    tiny_transfer.update(source=str(tiny_source), freeze=["mlp_extractor.policy_net.0"])
    stop_after(monkeypatch, 70, signal.SIGTERM)
    with pytest.raises(Interrupted, match="Stopped by SIGTERM.*rltransfer transfer --resume") as stop:
        transfer(tiny_transfer, progress_bar=False, verbose=False)
    assert stop.value.exit_code == 143
    monkeypatch.setattr(callbacks, "stop_requested", lambda: None)
    result = transfer(resume=stop.value.run_dir, progress_bar=False, verbose=False)
    assert result.frozen_unchanged is True and result.timesteps >= 512


def test_resuming_a_transfer_whose_source_changed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_source: Path, tiny_transfer: dict
) -> None:
    import shutil

    from rltransfer.rl.transfer import transfer

    source = tmp_path / "source.zip"
    shutil.copy(tiny_source / "best_model.zip", source)
    tiny_transfer.update(source=str(source), freeze=["mlp_extractor.policy_net.0"])
    stop_after(monkeypatch, 70, signal.SIGTERM)
    with pytest.raises(Interrupted) as stop:
        transfer(tiny_transfer, progress_bar=False, verbose=False)
    monkeypatch.setattr(callbacks, "stop_requested", lambda: None)
    shutil.copy(tiny_source / "last_model.zip", source)  # another model under the same name
    with pytest.raises(ConfigError, match=r"source.zip changed after .* started from it"):
        transfer(resume=stop.value.run_dir, progress_bar=False, verbose=False)
    record = json.loads((stop.value.run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and (stop.value.run_dir / "checkpoint" / "state.json").is_file()
    shutil.copy(tiny_source / "best_model.zip", source)  # the original back: the run continues
    assert transfer(resume=stop.value.run_dir, progress_bar=False, verbose=False).frozen_unchanged is True


def test_a_transfer_whose_source_moved_resumes_with_the_source_named_as_its_error_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_source: Path, tiny_transfer: dict, capsys
) -> None:
    import shutil

    from rltransfer.cli import main
    from rltransfer.rl.transfer import transfer

    source = tmp_path / "source.zip"
    shutil.copy(tiny_source / "best_model.zip", source)
    tiny_transfer.update(source=str(source))
    stop_after(monkeypatch, 70, signal.SIGTERM)
    with pytest.raises(Interrupted) as stop:
        transfer(tiny_transfer, progress_bar=False, verbose=False)
    monkeypatch.setattr(callbacks, "stop_requested", lambda: None)
    run = str(stop.value.run_dir)
    source.rename(tmp_path / "moved.zip")
    assert main(["transfer", "--resume", run, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"source.zip that {run} started from is gone" in error
    assert f"rltransfer transfer --resume {run} --source NEW_PATH" in error
    assert main(["transfer", "--resume", run, "--source", str(tmp_path / "moved.zip"), "--no-progress"]) == 0
    assert json.loads((stop.value.run_dir / "run.json").read_text())["status"] == "finished"
    assert main(["transfer", "--resume", run, "--seed", "3"]) == 2
    assert "give only --resume RUN_DIR (--no-progress and, when the source moved" in capsys.readouterr().err


def test_damaged_checkpoints_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_train: dict
) -> None:
    stop_after(monkeypatch, 80)
    with pytest.raises(Interrupted):
        train(tiny_train, progress_bar=False)
    run = Path(tiny_train["log_root"]) / "tiny-source"
    state = state_file(run)
    state.write_bytes(state.read_bytes()[:-100])  # torn by another tool
    with pytest.raises(ConfigError, match=r"state-320-\w+\.pt is missing, truncated or was changed"):
        train(resume=run, progress_bar=False)
    (run / "checkpoint" / "state.json").write_text('{"num_timesteps": 3')
    with pytest.raises(ConfigError, match=r"state\.json is truncated or damaged"):
        train(resume=run, progress_bar=False)
    with pytest.raises(ConfigError, match="not an rltransfer run directory"):
        train(resume=tmp_path, progress_bar=False)


class Poison(BaseCallback):
    """NaN injection: one weight becomes NaN at the end of the rollout that passes `step`."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_rollout_end(self) -> None:
        if self.num_timesteps >= self.step:
            with torch.no_grad():
                self.model.policy.action_net.weight[0, 0] = float("nan")

    def _on_step(self) -> bool:
        return True


def test_nan_parameter_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_train: dict
) -> None:
    from rltransfer.agents import build_agent
    from rltransfer.core.io import prepare_run_dir
    from rltransfer.rl.environment import make_envs
    from rltransfer.rl.training import run_training

    config = parse_config(tiny_train, TrainConfig)
    train_env, eval_env = make_envs(config.env, 0)
    model = build_agent(config.agent, train_env, seed=0, device="cpu")
    run = prepare_run_dir(config.log_root, config.name)
    with pytest.raises(
        NumericalError,
        match=r"parameter action_net.weight became NaN or infinite (after|by) step 384.*"
        r"learning rate.*last good checkpoint \(step 256\)",
    ):
        run_training(model, config, run, eval_env, kind="train", progress_bar=False, callbacks=[Poison(300)])
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    saved = torch.load(state_file(run), weights_only=True)["policy"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())


WRITER = """
import sys, time
from rltransfer.core.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "w") as handle:
        handle.write('{"half": ')
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
        handle.write('"never"}')
"""


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_the_old_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    target.write_text('{"status": "old"}')
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert json.loads(target.read_text()) == {"status": "old"}  # never torn
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "run.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".run.json.")  # the half-written temporary


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_train_signal_then_resume(tmp_path: Path, signum: int, cli: Any) -> None:
    run = tmp_path / "runs" / "source"
    code, stderr = cli.signal_when_ready(
        cli.long_train_run(tmp_path / "runs"), run / "checkpoint" / "state.json", signum
    )
    assert code == 128 + signum, stderr
    assert f"Stopped by {signal.Signals(signum).name}" in stderr and "rltransfer train --resume" in stderr
    assert "Traceback" not in stderr
    steps = json.loads((run / "checkpoint" / "state.json").read_text())["num_timesteps"]
    cli.shorten_budget(run, "budget: 1000000", f"budget: {steps + 1000}")
    resumed = cli.resume("train", run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at step {steps:,}" in resumed.stdout
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["timesteps"] >= steps + 1000


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_last_evaluation_checkpoint(tmp_path: Path, cli: Any) -> None:
    run = tmp_path / "runs" / "source"
    cli.signal_when_ready(
        cli.long_train_run(tmp_path / "runs"), run / "checkpoint" / "state.json", signal.SIGKILL, 1.0
    )
    steps = read_agent_checkpoint(run)["num_timesteps"]  # digests match: the checkpoint is whole
    assert steps % 500 == 0 and json.loads((run / "run.json").read_text())["status"] == "running"
    cli.shorten_budget(run, "budget: 1000000", f"budget: {steps + 1000}")
    resumed = cli.resume("train", run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at step {steps:,}" in resumed.stdout


def test_a_crash_in_the_middle_of_a_checkpoint_leaves_the_previous_one_whole(
    tmp_path: Path, monkeypatch
) -> None:
    from rltransfer.agents import build_agent
    from rltransfer.agents.config import AgentConfig
    from rltransfer.rl import checkpoints
    from rltransfer.rl.environment import make_envs

    agent = AgentConfig(
        algo="dqn", hyperparams={"learning_starts": 20, "buffer_size": 200}, policy={"hidden": [8]}
    )
    env = make_envs(
        parse_config(
            {"name": "x", "budget": 1, "eval": {"every": 1}, "env": {"id": "CartPole-v1", "n_envs": 1}},
            TrainConfig,
        ).env,
        0,
    )[0]
    model = build_agent(agent, env, seed=0, device="cpu")
    model.learn(60)
    save_agent_checkpoint(model, tmp_path, {})
    model.learn(60, reset_num_timesteps=False)

    def killed(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt  # a second Ctrl-C (or a crash) after the data files, before state.json

    monkeypatch.setattr(checkpoints, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_agent_checkpoint(model, tmp_path, {})
    state = read_agent_checkpoint(tmp_path)  # the first checkpoint: every digest still matches
    assert state["num_timesteps"] == 60


def test_a_fault_before_any_saved_model_does_not_name_a_missing_file(
    tmp_path: Path, tiny_train: dict
) -> None:
    from rltransfer.agents import build_agent
    from rltransfer.core.io import prepare_run_dir
    from rltransfer.rl.environment import make_envs
    from rltransfer.rl.training import run_training

    config = parse_config(
        {**tiny_train, "agent": {**tiny_train["agent"], "optimizer": {"lr": float("inf")}}}, TrainConfig
    )
    train_env, eval_env = make_envs(config.env, 0)
    model = build_agent(config.agent, train_env, seed=0, device="cpu")
    run = prepare_run_dir(config.log_root, config.name)
    with pytest.raises(NumericalError) as caught:
        run_training(model, config, run, eval_env, kind="train", progress_bar=False)
    message = str(caught.value)
    best = run / "best_model.zip"  # the first update blows up before the first evaluation could save a model
    assert not best.exists() and str(best) not in message
    assert "No model was saved before it" in message and "learning rate too high" in message


def test_a_second_ctrl_c_says_what_can_still_be_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rltransfer import cli
    from rltransfer.core import interrupt

    with interrupt.stop_on_signals(resume=(tmp_path / "study", "study")):
        with interrupt.stop_on_signals(resume=(tmp_path / "study/runs/a/seed0", "train")):  # inner: not named
            interrupt._handler(signal.SIGINT, None)  # the first Ctrl-C asks for a clean stop
            with pytest.raises(interrupt.StoppedAtOnce) as caught:
                interrupt._handler(signal.SIGINT, None)  # the second stops at once
    message = str(caught.value)
    assert f"rltransfer study --resume {tmp_path / 'study'}" in message and "seed0" not in message
    assert interrupt.stop_requested() is None  # the outermost block leaves nothing behind

    def stopped(_args: object) -> int:
        raise caught.value

    monkeypatch.setattr(cli, "_dispatch", stopped)
    capture = io.StringIO()
    monkeypatch.setattr(sys, "stderr", capture)
    assert cli.main(["envs"]) == 130
    assert (
        capture.getvalue().startswith("rltransfer: Stopped at once by a second Ctrl-C")
        and "--resume" in capture.getvalue()
    )


def test_the_replay_buffer_is_written_at_most_every_buffer_seconds_and_always_on_a_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights go into every evaluation's checkpoint; the replay buffer only when `buffer_seconds` passed since
    it was last written, and whenever the run is stopped, so a clean stop resumes with every transition."""
    config = {
        "name": "dqn",
        "log_root": str(tmp_path),
        "budget": 2000,
        "device": "cpu",
        "env": {"id": "rltransfer/CartPole-v1", "n_envs": 1},
        "eval": {"every": 200, "episodes": 1, "patience": None},
        "checkpoint": {"buffer_seconds": 3600},
        "agent": {
            "algo": "dqn",
            "hyperparams": {"learning_starts": 50, "buffer_size": 1000},
            "policy": {"hidden": [8]},
        },
    }
    written: list[tuple[int, bool]] = []  # (step, with the buffer) of each checkpoint
    original = callbacks.save_agent_checkpoint

    def recording(model, run_dir, state, *, with_buffer=True):  # type: ignore[no-untyped-def]
        written.append((int(model.num_timesteps), with_buffer))
        folder = original(model, run_dir, state, with_buffer=with_buffer)
        files = json.loads((folder / "state.json").read_text())["files"]
        assert (folder / files["replay_buffer"][0]).is_file()  # every checkpoint names a buffer file it has
        return folder

    monkeypatch.setattr(callbacks, "save_agent_checkpoint", recording)
    stop_after(monkeypatch, 700)
    with pytest.raises(Interrupted):
        train(config, progress_bar=False)
    # evaluations at 200, 400, 600, then the stop at 700: the first and the stop write the buffer
    assert written == [(200, True), (400, False), (600, False), (700, True)]
    run = tmp_path / "dqn"
    state = read_agent_checkpoint(run)
    with np.load(state["folder"] / state["files"]["replay_buffer"][0]) as arrays:
        # the buffer as it was at the stop (SB3 stores a step's transition after the callback that stopped it)
        assert int(arrays["position"][0]) == 699


def test_the_fused_nan_check_names_the_bad_parameter_and_clears_a_huge_finite_one() -> None:
    from rltransfer.rl.callbacks import nonfinite_parameter

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    assert nonfinite_parameter(model, params) is None
    with torch.no_grad():
        model[0].weight.fill_(3e30)  # finite, but its norm overflows float32
    assert nonfinite_parameter(model, params) is None
    with torch.no_grad():
        model[1].bias[1] = float("nan")
    assert nonfinite_parameter(model, params) == "1.bias"
    with torch.no_grad():
        model[1].bias[1] = float("inf")
    assert nonfinite_parameter(model) == "1.bias"


def test_a_full_disk_inside_torch_save_is_a_clean_storage_error(tmp_path: Path, monkeypatch) -> None:
    """torch reports a failed write as a RuntimeError of its zip writer; the user gets the path and the cause."""
    from rltransfer.core.errors import StorageError
    from rltransfer.core.io import atomic_path

    def full(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(
        StorageError, match=r"Cannot write .*state\.pt: the file could not be written \(is the disk full\?\)"
    ):
        with atomic_path(tmp_path / "state.pt", suffix=".pt") as tmp:
            torch.save({}, tmp)
    assert not list(tmp_path.iterdir())  # nothing half-written is left
