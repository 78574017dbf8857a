"""``rltransfer train | transfer | study | tune | evaluate | select | image | layers | envs``: the command line over
the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rltransfer.core.errors import ConfigError, RLTransferError
from rltransfer.core.interrupt import Interrupted


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--set {item!r} must look like key.subkey=value, e.g. --set agent.optimizer.lr=0.001."
            )
        if "" in key.split("."):
            raise ConfigError(
                f"--set {item!r}: the key `{key}` has an empty part; it must be setting names joined by single "
                "dots, e.g. --set eval.every=1000."
            )
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[key] = value
    for flag in ("name", "seed", "seeds", "budget", "device", "log_root", "source"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    return overrides


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", help="YAML config file, or a shipped config such as cartpole/source"
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    parser.add_argument("--name", help="run name (the run directory is LOG_ROOT/NAME)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--budget", type=int, help="maximum environment steps")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--log-root", dest="log_root", help="folder holding every run (default: runs)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rltransfer")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _execution_args(parser: argparse.ArgumentParser, what: str) -> None:
    """Where a study's runs (or a tuning's trials) execute: --workers, --backend, --address."""
    parser.add_argument(
        "--workers", type=int, help=f"local backend: {what} at once (default: the number of CPU cores)"
    )
    parser.add_argument(
        "--backend",
        choices=["local", "ray"],
        help=f"where {what} execute: a local process pool or a Ray cluster",
    )
    parser.add_argument(
        "--address", help="ray backend: the cluster's head, HOST:PORT (default: start Ray on this machine)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rltransfer", description="Reinforcement transfer learning on SB3.")
    parser.add_argument("--version", action="version", version=f"rltransfer {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a source agent from a config")
    _run_args(train)
    transfer = commands.add_parser(
        "transfer", help="transfer a source agent to a target game and fine-tune it"
    )
    _run_args(transfer)
    transfer.add_argument(
        "--source",
        help="source run directory or SB3 .zip (overrides the config; with --resume: where the run's source lies now)",
    )
    study = commands.add_parser("study", help="compare transfer strategies with learning from scratch")
    study.add_argument("config", nargs="?", help="YAML study config, or a shipped one such as cartpole/study")
    study.add_argument(
        "--resume", metavar="STUDY_DIR", help="continue an interrupted study (its runs' checkpoints included)"
    )
    study.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    study.add_argument("--name", help="study name (the study directory is LOG_ROOT/NAME)")
    study.add_argument("--budget", type=int, help="environment steps of every run")
    study.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    study.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    study.add_argument("--log-root", dest="log_root", help="folder holding the study (default: runs)")
    _execution_args(study, "runs")
    study.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar and the per-run lines"
    )
    tune = commands.add_parser(
        "tune",
        help="search the transfer recipe that pays (Optuna) against an equally tuned scratch control",
    )
    tune.add_argument("config", nargs="?", help="YAML tune config, or a shipped one such as cartpole/tune")
    tune.add_argument(
        "--resume", metavar="TUNE_DIR", help="continue an interrupted tuning (finished trials are kept)"
    )
    tune.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    tune.add_argument("--name", help="tuning name (the tuning directory is LOG_ROOT/NAME)")
    tune.add_argument("--budget", type=int, help="environment steps of every run")
    tune.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    tune.add_argument("--log-root", dest="log_root", help="folder holding the tuning (default: runs)")
    _execution_args(tune, "trials")
    image = commands.add_parser(
        "image",
        help="transfer an image classifier (freeze the trunk, new head, fine-tune) and compare with scratch",
        description="rltransfer image CONFIG [options]  |  rltransfer image predict MODEL IMAGE...",
    )
    image.add_argument(
        "config", nargs="?", help="YAML image config (or a shipped one such as images/digits), or `predict`"
    )
    image.add_argument(
        "images", nargs="*", help="with `predict`: the model folder (or run directory), then images"
    )
    image.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    image.add_argument("--name", help="run name (the run directory is LOG_ROOT/NAME)")
    image.add_argument("--seed", type=int)
    image.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    image.add_argument("--log-root", dest="log_root", help="folder holding every run (default: runs)")
    image.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    image.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    evaluate = commands.add_parser(
        "evaluate",
        help="play a saved agent for N episodes and print its mean return; --video records them to MP4",
    )
    evaluate.add_argument("agent", help="an rltransfer run directory or an SB3 .zip")
    evaluate.add_argument("--env", help="game to play (default: the one the agent's run was trained on)")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to play (default: 10)")
    evaluate.add_argument("--video", metavar="DIR", help="record every episode to an MP4 in DIR")
    evaluate.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of the greedy policy"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the evaluation env (default: 0)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument(
        "--trust-source",
        action="store_true",
        help="load with SB3's full loader (runs pickled code: trusted files only)",
    )
    select = commands.add_parser(
        "select",
        help="rank candidate source agents on a target game and choose one (or recommend scratch)",
        description="Rank candidate sources on a target game with a cheap probe: each becomes the target's agent "
        "as a fine-tuning run would build it (what fits is copied), plays --episodes deterministic episodes "
        "(after --finetune steps, if given) and is compared with a random policy on the same episodes. The best "
        "source that beats random (paired sign-flip test at 5%, Holm-corrected) is chosen; when none does, "
        "learning from scratch is recommended.",
    )
    select.add_argument(
        "sources", nargs="+", help="run directories, SB3 .zip files, hf:// addresses, or folders holding them"
    )
    select.add_argument(
        "--env", required=True, help="the target game, e.g. rltransfer/CartPoleReversedForce-v1"
    )
    select.add_argument(
        "--context",
        action="append",
        metavar="KEY=VALUE",
        help="a context parameter of the target game (repeatable), e.g. --context pole_length=0.3",
    )
    select.add_argument("--episodes", type=int, default=20, help="probe episodes per source (default: 20)")
    select.add_argument(
        "--finetune", type=int, default=0, metavar="STEPS", help="fine-tune each source this long first"
    )
    select.add_argument("--seed", type=int, default=0, help="seed of the probe (default: 0)")
    select.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    select.add_argument("--out", metavar="FILE.json", help="also write the ranking to this JSON file")
    select.add_argument(
        "--trust-source",
        action="store_true",
        help="load with SB3's full loader (runs pickled code: trusted files only)",
    )
    layers = commands.add_parser(
        "layers",
        help="list an agent's tensors: name, shape, parameter count",
        description="Print every tensor of a saved agent's policy (name, shape, parameter count) and its algorithm. "
        "The layer names that freeze, reinit and layer_map take are these names without .weight / .bias.",
    )
    layers.add_argument("agent", help="an rltransfer run directory or an SB3 .zip")
    commands.add_parser("envs", help="list the families of similar games and their context parameters")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except Interrupted as stop:
        print(f"rltransfer: {stop}", file=sys.stderr)
        return stop.exit_code
    except RLTransferError as error:
        print(f"rltransfer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"rltransfer: {stop or 'interrupted.'}", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    commands = {
        "envs": _envs,
        "layers": _layers,
        "image": _image,
        "study": _study,
        "tune": _tune,
        "evaluate": _evaluate,
        "select": _select,
    }
    return commands.get(args.command, _run)(args)


def _envs(_args: argparse.Namespace) -> int:
    from rltransfer.envs import describe_families

    print(describe_families())
    return 0


def _execution_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--backend/--address/--workers as config overrides: where runs execute may change on resume, what they
    compute may not."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}.")
    execution = {
        f"execution.{key}": value
        for key, value in (("backend", args.backend), ("address", args.address), ("workers", args.workers))
        if value is not None
    }
    if args.address and args.backend is None:
        execution["execution.backend"] = "ray"
    if args.backend or args.address:  # a config's execution section belongs to the backend it names: replaced
        execution = {"execution": {key.split(".")[1]: value for key, value in execution.items()}}
    return execution


def _load_for_resume(args: argparse.Namespace, model: Any, saved_name: str, command: str) -> Any:
    """The config a study or tuning directory saved, living where the directory is now."""
    from rltransfer.core.config import load_config, resolve_config_path

    execution = _execution_overrides(args)
    if args.resume:
        if args.config or _overrides(args):
            raise ConfigError(
                f"--resume continues a {command} with its own saved config; give only --resume DIR (and, to "
                "change where its runs execute, --backend, --address or --workers)."
            )
        saved = Path(args.resume) / saved_name
        if not saved.is_file():
            raise ConfigError(f"{args.resume} is not an rltransfer {command} directory (no {saved_name}).")
        # it lives where it is now, whatever log_root it was started with
        where = Path(args.resume).resolve()
        return load_config(saved, model, {"log_root": str(where.parent), "name": where.name, **execution})
    if not args.config:
        raise ConfigError(
            f"rltransfer {command} needs a CONFIG (e.g. cartpole/{command}) or --resume {command.upper()}_DIR."
        )
    return load_config(resolve_config_path(args.config), model, {**_overrides(args), **execution})


def _study(args: argparse.Namespace) -> int:
    from rltransfer.study import STUDY_CONFIG, StudyConfig, run_study

    report = run_study(
        _load_for_resume(args, StudyConfig, STUDY_CONFIG, "study"), progress=not args.no_progress
    )
    return 1 if report.failed else 0


def _tune(args: argparse.Namespace) -> int:
    from rltransfer.tune.config import TuneConfig
    from rltransfer.tune.search import TUNE_CONFIG, run_tune

    report = run_tune(_load_for_resume(args, TuneConfig, TUNE_CONFIG, "tune"))
    return 1 if report.confirmation.failed else 0


def _run(args: argparse.Namespace) -> int:
    from rltransfer.core.config import load_config, resolve_config_path
    from rltransfer.rl.config import TrainConfig, TransferConfig

    model = TrainConfig if args.command == "train" else TransferConfig
    config = None
    moved_source = getattr(args, "source", None)
    if args.resume:
        if args.config or set(_overrides(args)) - {"source"}:
            also = " and, when the source moved, --source NEW_PATH" if args.command == "transfer" else ""
            raise ConfigError(
                f"--resume continues a run with its own saved config; give only --resume RUN_DIR (--no-progress{also})."
            )
    elif not args.config:
        raise ConfigError(f"rltransfer {args.command} needs a CONFIG (or --resume RUN_DIR).")
    else:
        config = load_config(resolve_config_path(args.config), model, _overrides(args))
    if args.command == "train":
        from rltransfer.rl.training import train

        result = train(config, progress_bar=not args.no_progress, resume=args.resume)
    else:
        from rltransfer.rl.transfer import transfer

        result = transfer(
            config,
            progress_bar=not args.no_progress,
            resume=args.resume,
            source=moved_source if args.resume else None,
        )
        if result.frozen_unchanged is not None:
            state = "bit-identical" if result.frozen_unchanged else "CHANGED (please report this)"
            print(f"Frozen layers after fine-tuning: {state}.")
    print(result.summary())
    print(
        f"Curve: {result.run_dir / 'curves.png'}  TensorBoard: tensorboard --logdir {result.run_dir.parent}"
    )
    if args.command == "transfer":
        print(
            "Did it pay? Compare with learning from scratch on the same budget and seeds: `rltransfer study` with "
            "`strategies: [scratch, finetune]` (docs/studies.md), or `rltransfer tune` to tune both (docs/tune.md)."
        )
    return 0


def _image(args: argparse.Namespace) -> int:
    from rltransfer.core.config import load_config, resolve_config_path

    if args.config == "predict":
        from rltransfer.vision.pipeline import predict

        if len(args.images) < 2:
            raise ConfigError(
                "usage: rltransfer image predict MODEL IMAGE... : give the model folder (or the run directory "
                "made by `rltransfer image`) and at least one image."
            )
        for path, label, probability in predict(args.images[0], args.images[1:], args.device or "auto"):
            print(f"{path}\t{label}\t{probability:.3f}")
        return 0
    if args.images:
        raise ConfigError(
            f"rltransfer image takes one config, got extra arguments {args.images}. To classify images use "
            "`rltransfer image predict MODEL IMAGE...`."
        )
    from rltransfer.vision.config import ImageConfig
    from rltransfer.vision.pipeline import run_image

    if args.resume:
        if args.config or _overrides(args):
            raise ConfigError(
                "--resume continues a run with its own saved config; give only --resume RUN_DIR (and --no-progress)."
            )
        result = run_image(resume=args.resume, progress=not args.no_progress)
        log_root = result.run_dir.parent
    else:
        if not args.config:
            raise ConfigError("rltransfer image needs a CONFIG (e.g. images/digits) or --resume RUN_DIR.")
        config = load_config(resolve_config_path(args.config), ImageConfig, _overrides(args))
        result = run_image(config, progress=not args.no_progress)
        log_root = Path(config.log_root)
    print(result.summary())
    print(f"TensorBoard: tensorboard --logdir {log_root}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rltransfer.rl.evaluate import evaluate

    result = evaluate(
        args.agent, env=args.env, episodes=args.episodes, deterministic=not args.stochastic, seed=args.seed,
        video_dir=args.video, device=args.device, trust=args.trust_source,
    )  # fmt: skip
    print(result.summary())
    return 0


def _select(args: argparse.Namespace) -> int:
    from rltransfer.core.io import write_json
    from rltransfer.rl.config import EnvConfig
    from rltransfer.rl.select import select_source

    context: dict[str, Any] = {}
    for item in args.context or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--context {item!r} must look like KEY=VALUE, e.g. --context pole_length=0.3.")
        try:
            context[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(
                f"--context {item!r}: the value is not valid YAML ({reason}). Give a number, a list such as "
                "[0.5, 1.0], or {uniform: [0.3, 2.0]} (quoted in the shell)."
            ) from None
    if args.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {args.seed}.")
    try:
        env = EnvConfig(id=args.env, context=context)
    except ValueError as error:
        raise ConfigError(f"--env/--context: {error}") from None
    selection = select_source(
        args.sources, env, episodes=args.episodes, finetune_steps=args.finetune, seed=args.seed,
        device=args.device, trust=args.trust_source,
    )  # fmt: skip
    print(selection.summary())
    if args.out:
        write_json(Path(args.out), selection.to_dict())
        print(f"Ranking written to {args.out}")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from rltransfer.rl.sources import load_source

    source = load_source(args.agent)
    from rltransfer.core.tables import text_table

    rows = [("tensor", "shape", "parameters")]
    for key, tensor in source.state_dict.items():
        rows.append((key, str(list(tensor.shape)), f"{tensor.numel():,}"))
    print(text_table(rows))
    algo = source.algo or "unknown"
    print(f"{source.path}: algorithm {algo}; layer names are the tensor names without .weight/.bias")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
