"""A tuning's report: the trials of both arms, Optuna's parameter importances, the confirmation's verdict, the best
recipes as runnable configs, plots (PNG and TensorBoard)."""

from __future__ import annotations

import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from rltransfer.core.config import dump_config, parse_config
from rltransfer.core.io import atomic_path, versions, write_json, write_text
from rltransfer.rl.config import TrainConfig, TransferConfig
from rltransfer.study.metrics import json_safe
from rltransfer.study.report import StudyReport
from rltransfer.tune.search import ARMS, Arm, TuneSetup
from rltransfer.tune.space import apply_recipe, searched
from rltransfer.tune.storage import import_optuna

OBJECTIVE = (
    "mean evaluation return over the budget (area under the curve / budget), averaged over the trial seeds"
)


@dataclass
class TuneReport:
    """What a tuning found: each arm's best recipe and value, importances, and the confirmation's verdict."""

    tune_dir: Path
    best: dict[str, dict[str, Any]]
    """Arm -> {trial, value, recipe}."""
    importances: dict[str, dict[str, float]]
    verdict: str
    confirmation: StudyReport

    @property
    def tune_md(self) -> Path:
        return self.tune_dir / "tune.md"

    @property
    def tune_json(self) -> Path:
        return self.tune_dir / "tune.json"

    @property
    def best_transfer(self) -> Path:
        return self.tune_dir / "best-transfer.yaml"

    @property
    def best_scratch(self) -> Path:
        return self.tune_dir / "best-scratch.yaml"


def write_report(setup: TuneSetup, arms: dict[str, Arm], confirmation: StudyReport) -> TuneReport:
    """Write tune.md, tune.json, best-transfer.yaml, best-scratch.yaml, history.png, importance.png and the
    TensorBoard summary; print where they are."""
    tune_dir = setup.tune_dir
    _write_best_configs(setup, arms)
    importances = {name: _importances(arm.study) for name, arm in arms.items()}
    target = next(iter(confirmation.verdicts))
    verdict = confirmation.verdicts[target]["tuned-transfer"].text
    best = {
        name: {"trial": arm.best.number, "value": arm.best.value, "recipe": arm.recipe()}
        for name, arm in arms.items()
    }
    report = TuneReport(tune_dir, best, importances, verdict, confirmation)
    figures = {"tune/history": _history_figure(arms), "tune/importance": _importance_figure(importances)}
    for tag, figure in figures.items():
        with atomic_path(tune_dir / f"{tag.split('/')[1]}.png", suffix=".png") as tmp:
            figure.savefig(tmp, dpi=110, format="png")
    write_text(report.tune_md, _markdown(setup, arms, report))
    write_json(report.tune_json, _json(setup, arms, report))
    _tensorboard(tune_dir, arms, figures)
    print(
        f"Tuned transfer against tuned scratch on {len(setup.config.confirm_seed_list())} fresh seeds: {verdict}."
    )
    print(
        f"Report: {report.tune_md}  Best recipe: rltransfer transfer {report.best_transfer}  "
        f"TensorBoard: tensorboard --logdir {tune_dir}"
    )
    return report


def _write_best_configs(setup: TuneSetup, arms: dict[str, Arm]) -> None:
    """Each arm's best recipe as a config that ``rltransfer transfer`` (or ``train``) runs as it is."""
    config = setup.config
    for arm, model, path in (
        ("transfer", TransferConfig, setup.tune_dir / "best-transfer.yaml"),
        ("scratch", TrainConfig, setup.tune_dir / "best-scratch.yaml"),
    ):
        run = apply_recipe(
            setup.runs[arm], arms[arm].recipe(), setup.layers if arm == "transfer" else None, f"{arm} recipe"
        )
        run.update(
            name=f"{config.name}-best-{arm}", seed=config.confirm_seed_list()[0], log_root=config.log_root
        )
        header = (
            f"# The best {arm} recipe of the tuning {config.name} (trial {arms[arm].best.number}, "
            f"{arms[arm].best.value:.1f} mean return over the budget).\n"
            f"#   rltransfer {'transfer' if arm == 'transfer' else 'train'} {path}\n"
        )
        write_text(path, header + dump_config(parse_config(run, model, str(path))))


def _importances(study: Any) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched parameter (empty when too few trials finished)."""
    optuna = import_optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2 or not any(t.distributions for t in complete):
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            return {
                k: float(v)
                for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()
            }
    except (RuntimeError, ValueError):  # e.g. every finished trial has the same value
        return {}


def _rows(arm: Arm) -> list[dict[str, Any]]:
    rows = []
    for trial in arm.study.get_trials(deepcopy=False):
        if trial.user_attrs.get("interrupted"):
            continue
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value if trial.value is not None else _last(trial),
                "time_to_threshold": trial.user_attrs.get("time_to_threshold"),
                "seconds": trial.user_attrs.get("seconds"),
                "recipe": trial.user_attrs.get("recipe", {}),
                "error": trial.user_attrs.get("error"),
            }
        )
    return rows


def _last(trial: Any) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


def _format_recipe(recipe: dict[str, Any]) -> str:
    parts = []
    for key, value in recipe.items():
        if key == "unfreeze_at" and value is None:
            continue
        parts.append(f"{key} {value:.2e}" if key == "lr" else f"{key} {value}")
    return ", ".join(parts)


def _markdown(setup: TuneSetup, arms: dict[str, Arm], report: TuneReport) -> str:
    config = setup.config
    confirmation = report.confirmation
    target = next(iter(confirmation.verdicts))
    lines = [
        f"# Tuning `{config.name}`: {config.target.id}",
        "",
        f"Source: {setup.source_path}. Both arms searched with Optuna (TPE, sampler seed {config.sampler_seed}, "
        f"{config.pruner.kind} pruner), {config.trials} trials each, every trial on seeds {config.trial_seed_list()} "
        f"with {config.budget:,} steps per run. Objective: the {OBJECTIVE}. The transfer arm searched "
        f"{', '.join(searched(config.space, 'transfer'))}; the scratch arm {', '.join(searched(config.space, 'scratch'))}.",
        "",
        f"## Verdict: {report.verdict}",
        "",
        f"The best transfer recipe against the best scratch recipe on {len(config.confirm_seed_list())} fresh seeds "
        f"{config.confirm_seed_list()} (seeds no trial saw), through the study's paired tests: see "
        f"[confirm/report.md](confirm/report.md). A verdict is stated only where the corrected test supports it.",
        "",
        "```",
        confirmation.table.rstrip(),
        "```",
        "",
        "| arm | best trial | objective | recipe |",
        "|---|---|---|---|",
    ]
    for name, best in report.best.items():
        lines.append(f"| {name} | {best['trial']} | {best['value']:.1f} | {_format_recipe(best['recipe'])} |")
    lines += ["", f"Run the best transfer recipe: `rltransfer transfer {report.best_transfer}`.", ""]
    lines += ["## Parameter importance (fANOVA)", ""]
    for name, values in report.importances.items():
        text = ", ".join(f"{k} {v:.2f}" for k, v in values.items()) or "too few finished trials"
        lines.append(f"- {name}: {text}")
    lines += [
        "",
        "![optimisation history](history.png)",
        "",
        "![parameter importance](importance.png)",
        "",
        "![confirmation: tuned transfer against tuned scratch](confirm/curves.png)",
        "",
    ]
    for name, arm in arms.items():
        lines += [
            f"## Trials: {name} ({_trial_seconds(arm):,.0f} s of trial time)",
            "",
            "| trial | state | objective | time to threshold | seconds | recipe |",
            "|---|---|---|---|---|---|",
        ]
        for row in _rows(arm):
            value = f"{row['value']:.1f}" if row["value"] is not None else "-"
            time_to = f"{row['time_to_threshold']:,.0f}" if row["time_to_threshold"] is not None else "-"
            recipe = _format_recipe(row["recipe"]) + (f" ({row['error']})" if row["error"] else "")
            lines.append(
                f"| {row['trial']} | {row['state']} | {value} | {time_to} | {row['seconds'] or 0:.0f} | {recipe} |"
            )
        lines.append("")
    lines += [
        "Pruned trials show the objective so far when they were stopped (their area so far per step of the whole "
        "budget, so lower than a finished trial's). Time to threshold is the mean over the trial's seeds of the "
        f"first evaluation at or above {setup.threshold:g} (the budget when never reached).",
        "",
        f"Confirmation target: {target}.",
        "",
    ]
    return "\n".join(lines)


def _trial_seconds(arm: Arm) -> float:
    return float(sum(row["seconds"] or 0.0 for row in _rows(arm)))


def _json(setup: TuneSetup, arms: dict[str, Arm], report: TuneReport) -> dict[str, Any]:
    return json_safe(
        {
            "config": setup.config.model_dump(mode="json"),
            "objective": OBJECTIVE,
            "verdict": report.verdict,
            "best": report.best,
            "importances": report.importances,
            "trials": {name: _rows(arm) for name, arm in arms.items()},
            "trial_seconds": {name: round(_trial_seconds(arm), 1) for name, arm in arms.items()},
            # wall time of each arm's search in the command that wrote this report (a resume counts what it ran)
            "search_wall_seconds": {name: round(arm.seconds, 1) for name, arm in arms.items()},
            "confirmation": str(report.confirmation.report_json),
            "versions": versions(),
        }
    )


def _history_figure(arms: dict[str, Arm]) -> Figure:
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    for name, color in zip(ARMS, ("tab:blue", "tab:gray"), strict=True):
        rows = [r for r in _rows(arms[name]) if r["value"] is not None]
        done = [r for r in rows if r["state"] == "complete"]
        pruned = [r for r in rows if r["state"] == "pruned"]
        axis.scatter([r["trial"] for r in done], [r["value"] for r in done], color=color, label=f"{name}")
        axis.scatter(
            [r["trial"] for r in pruned], [r["value"] for r in pruned], color=color, marker="x", alpha=0.6,
            label=f"{name} (pruned, so far)",
        )  # fmt: skip
        best, xs, ys = -math.inf, [], []
        for row in sorted(done, key=lambda r: r["trial"]):
            best = max(best, row["value"])
            xs.append(row["trial"])
            ys.append(best)
        axis.step(xs, ys, where="post", color=color, alpha=0.8)
    axis.set_xlabel("trial")
    axis.set_ylabel("mean return over the budget")
    axis.set_title("Optimisation history (line: best so far)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _importance_figure(importances: dict[str, dict[str, float]]) -> Figure:
    figure = Figure(figsize=(7, 3.5))
    axes = figure.subplots(1, len(importances), squeeze=False)[0]
    for axis, (name, values) in zip(axes, importances.items(), strict=True):
        keys = list(values)[::-1]
        axis.barh(keys, [values[k] for k in keys], color="tab:blue" if name == "transfer" else "tab:gray")
        axis.set_title(f"{name}: importance")
        axis.set_xlim(0, 1)
        if not keys:
            axis.text(0.5, 0.5, "too few finished trials", ha="center", va="center", transform=axis.transAxes)
    figure.tight_layout()
    return figure


def _tensorboard(tune_dir: Path, arms: dict[str, Arm], figures: dict[str, Figure]) -> None:
    """``summary/<arm>``: each trial's objective against its number, and the best so far; the plots."""
    root = tune_dir / "summary"
    if root.exists():
        shutil.rmtree(root)  # rebuilt whole from the storage on every report
    for name, arm in arms.items():
        writer = SummaryWriter(str(root / name))
        best = -math.inf
        for row in _rows(arm):
            if row["value"] is None:
                continue
            writer.add_scalar(f"tune/{row['state']}", row["value"], row["trial"])
            if row["state"] == "complete":
                best = max(best, row["value"])
                writer.add_scalar("tune/best_so_far", best, row["trial"])
        writer.close()
    writer = SummaryWriter(str(root / "figures"))
    for tag, figure in figures.items():
        writer.add_figure(tag, figure, 0, close=True)
    writer.close()
