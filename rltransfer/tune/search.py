"""``rltransfer tune``: search transfer recipes for one target, search scratch's own hyperparameters with the same
number of trials, seeds and budget, then confirm the two winners against each other on fresh seeds.

Tuning directory ``<log_root>/<name>/``: ``source/`` (when the tuning trains its source), ``tune.db`` (the trials),
``trials/<arm>/trial<k>/seed<s>/`` (run directories), ``confirm/`` (the confirmation study), ``tune.yaml`` (what
``--resume`` runs again), ``tune.md``, ``tune.json``, ``best-transfer.yaml``, ``best-scratch.yaml``, the plots and
``summary/`` (TensorBoard).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rltransfer.agents.config import parse_agent
from rltransfer.core.config import coerce_config, dump_config
from rltransfer.core.errors import ConfigError, TransferError
from rltransfer.core.interrupt import Interrupted, stop_on_signals
from rltransfer.core.io import refuse_foreign_dir, write_text
from rltransfer.rl.config import EnvConfig
from rltransfer.rl.mapping import map_weights
from rltransfer.study.config import StudyConfig
from rltransfer.study.execute import RESULT
from rltransfer.study.executor import Executor
from rltransfer.study.plan import (
    RunSpec,
    StudyPlan,
    config_fingerprint,
    plan_study,
    probe_policy,
    study_source,
)
from rltransfer.study.report import StudyReport
from rltransfer.study.run import make_executor, run_study, train_source
from rltransfer.tune.config import TuneConfig
from rltransfer.tune.space import agent_overrides, apply_recipe, layer_options, sample
from rltransfer.tune.storage import default_storage, import_optuna, make_pruner, open_storage

TUNE_CONFIG = "tune.yaml"
ARMS = ("transfer", "scratch")
TRIAL_RUNNER = "rltransfer.tune.trial:run_trial"


@dataclass(frozen=True)
class TrialSpec(RunSpec):
    """A trial as the executor sees it: one work item that runs the trial's seeds in turn."""

    @property
    def key(self) -> str:
        return f"{self.strategy}/trial{self.seed}"


@dataclass
class TuneSetup:
    """What the search needs, resolved and validated before the first trial."""

    config: TuneConfig
    tune_dir: Path
    plan: StudyPlan
    runs: dict[str, dict[str, Any]]
    """Arm -> the run config its trials start from (as a study would plan it)."""
    layers: tuple[dict[str, list[str]], dict[str, list[str]]]
    source_path: Path
    storage: str
    threshold: float


@dataclass
class Arm:
    """One arm's search: the Optuna study and its best trial's recipe."""

    name: str
    study: Any
    seconds: float

    @property
    def best(self) -> Any:
        return self.study.best_trial

    def recipe(self) -> dict[str, Any]:
        return dict(self.best.user_attrs["recipe"])


def run_tune(
    config: TuneConfig | str | Path | dict[str, Any],
    *,
    workers: int | None = None,
    executor: Executor | None = None,
) -> Any:
    """Run (or resume) a tuning: both searches, then the confirmation study; write the report and the best
    recipes as configs. Returns the :class:`rltransfer.tune.report.TuneReport`."""
    config = coerce_config(config, TuneConfig)
    import_optuna()
    setup = _setup(config)
    probe = setup.plan.config
    if executor is None:
        executor = make_executor(probe, workers)
    check = getattr(executor, "check", None)
    if check is not None:
        check()
    try:
        if setup.plan.source_config is not None:
            train_source(setup.plan.source_config, setup.tune_dir / "source", setup.tune_dir, "tune")
        arms = {arm: _search(setup, arm, executor) for arm in ARMS}
        confirm = _confirm(setup, arms, executor)
        from rltransfer.tune.report import write_report

        return write_report(setup, arms, confirm)
    finally:
        getattr(executor, "close", lambda: None)()


def _setup(config: TuneConfig) -> TuneSetup:
    """Plan the target as a study would (source, target, mappability), resolve the layer choices, open the
    storage; write ``tune.yaml``."""
    tune_dir = Path(config.log_root) / config.name
    refuse_foreign_dir(tune_dir, TUNE_CONFIG, "tuning")
    probe = StudyConfig(
        name=config.name,
        log_root=config.log_root,
        device=config.device,
        source=config.source,
        targets=[config.target],
        strategies=["finetune"],
        seeds=config.confirm_seed_list()[:1],
        budget=config.budget,
        n_envs=config.n_envs,
        eval=config.eval,
        threshold=config.threshold,
        last_evals=config.last_evals,
        agent=config.agent,
        execution=config.execution,
    )
    plan = plan_study(probe, tuning=True)
    runs = {
        "scratch": next(spec.config for spec in plan.runs if spec.strategy == "scratch"),
        "transfer": next(spec.config for spec in plan.runs if spec.strategy == "finetune"),
    }
    source = study_source(probe, tune_dir)
    run = runs["transfer"]
    policy = probe_policy(parse_agent(run["agent"], "agent"), EnvConfig(**run["env"]))
    reinitialised = set(map_weights(source.state, policy).reinitialised)
    layers = layer_options(policy, config.space, reinitialised)
    config = config.model_copy(update={"agent": source.agent})  # in full: --resume builds exactly it
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = config.storage or default_storage(tune_dir)
    # a bad URL or trials of another search are refused before anything trains, and before tune.yaml (what
    # --resume continues) is touched: a refused call never spoils an interrupted tuning
    _check_same_search(open_storage(storage, create=True), config)
    write_text(tune_dir / TUNE_CONFIG, dump_config(config))
    return TuneSetup(
        config,
        tune_dir,
        plan,
        runs,
        layers,
        Path(run["source"]),
        storage,
        next(iter(plan.thresholds.values())),
    )


def _search(setup: TuneSetup, arm: str, executor: Executor) -> Arm:
    """Run one arm's trials until it has `trials` of them finished (pruned and failed ones count, interrupted ones
    are run again with the same parameters)."""
    optuna = import_optuna()
    config = setup.config
    study = optuna.create_study(
        study_name=f"{config.name}-{arm}",
        storage=open_storage(setup.storage, create=True),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=_sampler_seed(setup, arm)),
        pruner=make_pruner(config.pruner.model_dump()),
        load_if_exists=True,
    )
    if study.user_attrs.get("search") is None:
        study.set_user_attr("search", search_fingerprint(config))
    _recover(study, setup.tune_dir / "trials" / arm)
    started = time.perf_counter()
    slots = int(getattr(executor, "slots", 1))
    while (remaining := config.trials - _counted(study)) > 0:
        batch = [_ask(setup, arm, study) for _ in range(min(slots, remaining))]
        with stop_on_signals(resume=(setup.tune_dir, "tune")):
            signum = executor.run(batch, lambda spec, record: _tell(study, spec, record, config.trials))
        if signum is not None:
            raise Interrupted(
                signum,
                setup.tune_dir,
                "tune",
                f" ({_counted(study)} of {config.trials} {arm} trials finished; the interrupted ones run again)",
            )
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        raise TransferError(
            f"No trial of the {arm} search finished (all were pruned or failed); see the errors above and "
            f"{setup.tune_dir / 'trials' / arm}. Widen the space or raise `trials`."
        )
    return Arm(arm, study, time.perf_counter() - started)


SEARCH_KEYS = ("source", "target", "budget", "n_envs", "eval", "threshold", "agent", "trial_seeds", "sampler_seed",
               "pruner", "space")  # fmt: skip
"""What a trial's score depends on: stored trials are only reused while these stay the same (``trials`` may be
raised to search on; where trials run and the confirmation seeds may change)."""


def search_fingerprint(config: TuneConfig) -> str:
    data = config.model_dump(mode="json")
    return config_fingerprint({key: data[key] for key in SEARCH_KEYS})


def _check_same_search(storage: Any, config: TuneConfig) -> None:
    """Trials already stored under this tuning's name must come from the same search."""
    optuna = import_optuna()
    names = set(optuna.study.get_all_study_names(storage=storage))
    fingerprint = search_fingerprint(config)
    for arm in ARMS:
        name = f"{config.name}-{arm}"
        if name not in names:
            continue
        stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get("search")
        if stored is not None and stored != fingerprint:
            raise ConfigError(
                f"The storage of the tuning `{config.name}` already holds trials with other settings (one of "
                f"{', '.join(SEARCH_KEYS)} changed), so their scores would not compare. Continue that tuning "
                "with `rltransfer tune --resume DIR`, give the new search another `name` (or `storage`), or "
                "remove the old tuning directory."
            )


def _sampler_seed(setup: TuneSetup, arm: str) -> int:
    """The sampler's seed: `sampler_seed` for a fresh search; on a resume, moved on by the trials already
    stored, so that the new trials do not repeat the draws the interrupted command made first."""
    optuna = import_optuna()
    name = f"{setup.config.name}-{arm}"
    storage = open_storage(setup.storage, create=True)
    done = 0
    if name in optuna.study.get_all_study_names(storage=storage):
        done = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    return setup.config.sampler_seed * 1_000 + ARMS.index(arm) + 7_919 * done


def _counted(study: Any) -> int:
    return sum(
        1
        for trial in study.get_trials(deepcopy=False)
        if trial.state.is_finished() and not trial.user_attrs.get("interrupted")
    )


def _recover(study: Any, arm_dir: Path) -> None:
    """Trials left running by a stop or a crash: one that finished before it could be recorded is recorded now;
    any other is marked interrupted and queued again with the same parameters."""
    optuna = import_optuna()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        record = _stored(arm_dir / f"trial{trial.number}" / RESULT)
        if isinstance(record, dict) and record.get("status") in ("finished", "pruned"):
            _tell(study, None, record, 0, number=trial.number)
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
        print(
            f"Trial {trial.number} of the {study.study_name} search was interrupted: it runs again.",
            flush=True,
        )


def _stored(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ask(setup: TuneSetup, arm: str, study: Any) -> TrialSpec:
    trial = study.ask()
    params = sample(trial, setup.config.space, arm, setup.layers if arm == "transfer" else None)
    trial.set_user_attr("recipe", params)
    config = setup.config
    run = apply_recipe(
        setup.runs[arm], params, setup.layers if arm == "transfer" else None, f"trial {trial.number}"
    )
    for key in ("name", "seed", "log_root"):
        run.pop(key, None)
    arm_dir = setup.tune_dir / "trials" / arm
    item: dict[str, Any] = {
        "name": f"trial{trial.number}",
        "log_root": str(arm_dir),
        "kind": "train" if arm == "scratch" else "transfer",
        "run": run,
        "seeds": config.trial_seed_list(),
        "budget": config.budget,
        "threshold": setup.threshold,
        "evals_per_run": config.budget // config.eval.every + 2,
        "trial": {
            "storage": setup.storage,
            "study": study.study_name,
            "id": trial._trial_id,
            "number": trial.number,
            "pruner": config.pruner.model_dump(),
        },
    }
    if arm == "transfer":
        item["source"] = run.pop("source")
    return TrialSpec(
        setup.plan.runs[0].target,
        arm,
        trial.number,
        TRIAL_RUNNER,
        item,
        arm_dir / f"trial{trial.number}",
        _trial_fingerprint(item),
    )


def _trial_fingerprint(item: dict[str, Any]) -> str:
    return config_fingerprint({"trial": item["trial"]["number"], "run": item["run"]})


def _tell(
    study: Any, spec: TrialSpec | None, record: dict[str, Any], total: int, number: int | None = None
) -> None:
    """Record a trial's end in the storage and print a line for it."""
    optuna = import_optuna()
    status = record["status"]
    if status == "interrupted":
        return  # left running: queued again when the search resumes
    number = spec.seed if spec is not None else number
    trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == number)
    study._storage.set_trial_user_attr(trial_id, "seconds", record.get("seconds", 0.0))
    if status == "failed":
        study._storage.set_trial_user_attr(trial_id, "error", record["error"])
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        line = f"FAILED: {record['error']}"
    else:
        study._storage.set_trial_user_attr(
            trial_id, "seed_objectives", {seed: r["objective"] for seed, r in record["seeds"].items()}
        )
        if record.get("time_to_threshold") is not None:
            study._storage.set_trial_user_attr(trial_id, "time_to_threshold", record["time_to_threshold"])
        if status == "pruned":
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
            line = f"pruned after {len(record['seeds'])} seed(s)"
        else:
            study.tell(number, record["value"])
            line = f"mean return over the budget {record['value']:.1f}"
    if spec is not None:
        print(
            f"[{study.study_name.rsplit('-', 1)[-1]} {_counted(study)}/{total}] trial {number}: {line} "
            f"({record.get('seconds', 0):.0f} s)",
            flush=True,
        )


def _confirm(setup: TuneSetup, arms: dict[str, Arm], executor: Executor) -> StudyReport:
    """The best transfer recipe against the best scratch recipe, as a study on the confirmation seeds."""
    config = setup.config
    transfer, scratch = arms["transfer"].recipe(), arms["scratch"].recipe()
    freeze, reinit = setup.layers
    scratch_agent = apply_recipe(setup.runs["scratch"], scratch, None, "the best scratch recipe")["agent"]
    study = StudyConfig(
        name="confirm",
        log_root=str(setup.tune_dir),
        device=config.device,
        source={"path": str(setup.source_path), "trust_source": config.source.trust_source},
        targets=[config.target],
        strategies=[
            {
                "name": "tuned-transfer",
                "freeze": freeze[transfer["freeze"]],
                "reinit": reinit[transfer["reinit"]],
                "unfreeze_at": transfer.get("unfreeze_at"),
                "agent": agent_overrides(transfer),
            }
        ],
        seeds=config.confirm_seed_list(),
        budget=config.budget,
        n_envs=setup.runs["scratch"]["env"]["n_envs"],
        eval=config.eval,
        threshold=config.threshold,
        last_evals=config.last_evals,
        agent=scratch_agent,
        execution=config.execution,
    )
    print(
        f"Confirmation: the best transfer recipe (trial {arms['transfer'].best.number}) against the best scratch "
        f"recipe (trial {arms['scratch'].best.number}) on {len(config.confirm_seed_list())} fresh seeds.",
        flush=True,
    )
    try:
        return run_study(study, executor=_Kept(executor))
    except Interrupted as stop:
        raise Interrupted(stop.signum, setup.tune_dir, "tune", " during the confirmation study") from None


@dataclass
class _Kept:
    """The tuning's executor lent to the confirmation study, which must not close it."""

    executor: Executor

    def run(self, specs: Any, on_record: Any) -> int | None:
        return self.executor.run(specs, on_record)

    @property
    def description(self) -> str:
        return str(getattr(self.executor, "description", ""))
