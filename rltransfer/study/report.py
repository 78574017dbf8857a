"""A study's report: transfer metrics per target and strategy, report.md / report.json, curve plots, TensorBoard."""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from rltransfer.core.io import atomic_path, versions, write_json, write_text
from rltransfer.core.tables import text_table
from rltransfer.study.aggregate import Aggregate, aggregate, format_aggregate
from rltransfer.study.aggregate import figure as aggregate_figure
from rltransfer.study.metrics import (
    StrategyMetrics,
    Summary,
    area_under_curve,
    asymptotic_return,
    initial_return,
    json_safe,
    seed_metrics,
    strategy_metrics,
    summarise,
    time_to_threshold,
    within_budget,
)
from rltransfer.study.plan import StudyPlan
from rltransfer.study.stats import ALPHA
from rltransfer.study.verdict import Verdict, target_verdicts


@dataclass
class StudyReport:
    """What a study measured: metrics[target][strategy], verdicts[target][strategy], the failed runs, the files."""

    study_dir: Path
    metrics: dict[str, dict[str, StrategyMetrics]]
    verdicts: dict[str, dict[str, Verdict]]
    scratch: dict[str, dict[str, Summary]]
    failed: dict[str, str]
    table: str
    aggregate: Aggregate
    retried: dict[str, int] = field(default_factory=dict)
    """Runs started again after their worker process died (a cluster backend), with how many times."""

    @property
    def report_md(self) -> Path:
        return self.study_dir / "report.md"

    @property
    def report_json(self) -> Path:
        return self.study_dir / "report.json"

    @property
    def curves_png(self) -> Path:
        return self.study_dir / "curves.png"

    @property
    def aggregate_png(self) -> Path:
        return self.study_dir / "aggregate.png"


def _curves(plan: StudyPlan, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[int, list]]]:
    curves: dict[str, dict[str, dict[int, list]]] = {}
    for spec in plan.runs:
        record = results.get(spec.key)
        if record and record.get("status") == "finished":
            # every run is compared over the same span: SB3 may overshoot the budget by part of a rollout
            curve = within_budget(record["curve"], plan.config.budget)
            curves.setdefault(spec.target, {}).setdefault(spec.strategy, {})[spec.seed] = curve
    return curves


def build_report(plan: StudyPlan, results: dict[str, dict[str, Any]]) -> StudyReport:
    """Compute every metric, write report.md, report.json, curves.png and the TensorBoard summary; print a table."""
    config = plan.config
    curves = _curves(plan, results)
    metrics: dict[str, dict[str, StrategyMetrics]] = {}
    scratch_summary: dict[str, dict[str, Summary]] = {}
    for target, threshold in plan.thresholds.items():
        by_strategy = curves.get(target, {})
        scratch = by_strategy.get("scratch", {})
        scratch_summary[target] = _scratch_summary(scratch, threshold, config.budget, config.last_evals)
        metrics[target] = {}
        for strategy in plan.strategies:
            if strategy == "scratch":
                continue
            per_seed = [
                seed_metrics(
                    seed,
                    curve,
                    scratch[seed],
                    threshold=threshold,
                    budget=config.budget,
                    last=config.last_evals,
                )
                for seed, curve in sorted(by_strategy.get(strategy, {}).items())
                if seed in scratch
            ]
            if per_seed:
                metrics[target][strategy] = strategy_metrics(per_seed)
    verdicts = {
        target: target_verdicts({s: m.per_seed for s, m in by.items()}) for target, by in metrics.items()
    }
    failed = {
        key: record.get("error", "") for key, record in results.items() if record.get("status") != "finished"
    }
    table = format_tables(metrics, verdicts, scratch_summary, plan.thresholds)
    overall = aggregate(curves, plan.thresholds, list(plan.strategies), last=config.last_evals)
    retried = {
        key: int(record["retries"]) for key, record in sorted(results.items()) if record.get("retries")
    }
    report = StudyReport(plan.study_dir, metrics, verdicts, scratch_summary, failed, table, overall, retried)
    figures = {"study/learning_curves": _figure(plan, curves)}
    _save_png(figures["study/learning_curves"], report.curves_png)
    if overall.strategies:
        figures["study/aggregate"] = aggregate_figure(overall)
        _save_png(figures["study/aggregate"], report.aggregate_png)
    write_text(report.report_md, _markdown(plan, report))
    write_json(report.report_json, _json(plan, report, results))
    _tensorboard(plan, curves, report, figures)  # closes the figures
    print(table)
    if retried:
        print(f"Retried after their worker died: {', '.join(f'{k} ({n}x)' for k, n in retried.items())}")
    if failed:
        print(f"{len(failed)} runs failed (re-run the study to retry them):", file=sys.stderr)
        for key, error in failed.items():
            print(f"  {key}: {error}", file=sys.stderr)
    print(
        f"Report: {report.report_md}  Plots: {report.curves_png}  TensorBoard: tensorboard --logdir {plan.study_dir}"
    )
    return report


def _scratch_summary(
    scratch: dict[int, list], threshold: float, budget: int, last: int
) -> dict[str, Summary]:
    values: dict[str, list[float]] = {"initial": [], "asymptotic": [], "auc": [], "time_to_threshold": []}
    for curve in scratch.values():
        values["initial"].append(initial_return(curve))
        values["asymptotic"].append(asymptotic_return(curve, last))
        values["auc"].append(area_under_curve(curve))
        values["time_to_threshold"].append(time_to_threshold(curve, threshold, budget).first)
    return {name: summarise(v) for name, v in values.items()}


COLUMNS = (
    ("jumpstart", "jumpstart", 1),
    ("asymptotic_gain", "asymptotic gain", 1),
    ("transfer_ratio", "transfer ratio", 2),
    ("time_to_threshold", "time to threshold", 0),
    ("speedup", "speed-up", 2),
    ("stable_speedup", "stable speed-up", 2),
)


def _rows(
    metrics: dict[str, StrategyMetrics], verdicts: dict[str, Verdict], scratch: dict[str, Summary]
) -> list[list[str]]:
    rows = [["strategy", *(title for _, title, _ in COLUMNS), "verdict"]]
    if scratch.get("time_to_threshold") and scratch["time_to_threshold"].n:
        rows.append(
            [
                "scratch (baseline)",
                "-",
                f"asymptote {scratch['asymptotic'].format(1)}",
                "-",
                scratch["time_to_threshold"].format(0),
                "1",
                "1",
                f"{scratch['time_to_threshold'].n} seeds",
            ]
        )
    for strategy, result in metrics.items():
        cells = [strategy]
        for name, _, digits in COLUMNS:
            text = result.summary[name].format(digits)
            if name == "time_to_threshold" and result.censored:
                text += f" ({result.censored}/{len(result.per_seed)} never)"
            elif 0 < result.summary[name].n < len(result.per_seed):  # e.g. a ratio to a scratch area of 0
                text += f" ({result.summary[name].n}/{len(result.per_seed)} seeds)"
            cells.append(text)
        cells.append(verdicts[strategy].text)
        rows.append(cells)
    return rows


def interval_note(metrics: dict[str, StrategyMetrics]) -> str:
    """What the table's intervals are: 95% order-statistic intervals, or the seeds' range with its coverage."""
    seeds = min((len(result.per_seed) for result in metrics.values()), default=0)
    coverages = [s.coverage for result in metrics.values() for s in result.summary.values() if s.n == seeds]
    if seeds and coverages and min(coverages) < 0.95:
        return (
            f"median [range] across {seeds} seeds; the range covers the median with only {min(coverages):.0%} "
            "probability, so the intervals are indicative"
        )
    return "median [interval covering it with >= 95% probability] across seeds"


def format_tables(
    metrics: dict[str, dict[str, StrategyMetrics]],
    verdicts: dict[str, dict[str, Verdict]],
    scratch: dict[str, dict[str, Summary]],
    thresholds: dict[str, float],
) -> str:
    """Terminal tables (one per target, drawn by rich within 100 columns: long cells wrap) of medians and
    intervals across seeds, with the verdicts."""
    blocks = []
    for target, by_strategy in metrics.items():
        rows = _rows(by_strategy, verdicts[target], scratch.get(target, {}))
        title = f"{target} (threshold {thresholds[target]:g}; {interval_note(by_strategy)})"
        # the verdicts are sentences: under the table, one line each, rather than a narrow column
        table = text_table([row[:-1] for row in rows], title)
        said = [f"  verdict, {row[0]}: {row[-1]}" for row in rows[1:] if not row[0].startswith("scratch")]
        blocks.append("\n".join([table, *said]))
    return "\n\n".join(blocks)


def _markdown(plan: StudyPlan, report: StudyReport) -> str:
    config = plan.config
    lines = [
        f"# Transfer study `{config.name}`",
        "",
        f"Source: {_source_line(plan)}; {config.budget:,} steps per run, evaluation every "
        f"{config.eval.every:,} steps on {config.eval.episodes} episodes"
        f"{' (deterministic)' if config.eval.deterministic else ''}; seeds {config.seed_list()}.",
        f"Reproduce: {_command()} (the resolved config is in report.json).",
        "",
        "Each cell is the median across seeds, each seed paired with scratch on the same seed, with an interval from "
        "order statistics that covers the median with at least 95% probability (from 6 seeds; below that the seeds' "
        "range is shown and marked indicative). Time to threshold is the first evaluation at or above the threshold; "
        "a run that never gets there counts as the budget (censored) and is counted in the table. Speed-up = "
        "scratch's time / the strategy's time; the stable variant uses the first evaluation after which the return "
        "stays above the threshold.",
        "",
        "Verdicts come from paired tests: for each strategy, the per-seed differences from scratch in steps to the "
        "threshold, asymptotic return and area under the curve, each with an exact two-sided sign-flip test, and "
        f"Holm's correction over all of a target's tests, so a target with no real effect gets any verdict at most "
        f"{ALPHA:.0%} of the time. A verdict is stated only when its corrected p-value is at most {ALPHA:g}; "
        "significantly slower, lower or smaller is NEGATIVE TRANSFER; otherwise 'no clear difference', or, when the "
        "seeds are too few for any test to succeed, how many are needed.",
        "",
    ]
    for target, by_strategy in report.metrics.items():
        lines += [f"## {target} (threshold {plan.thresholds[target]:g})", ""]
        if target in plan.selections:
            lines += [*_selection_lines(plan, target), ""]
        rows = _rows(by_strategy, report.verdicts[target], report.scratch.get(target, {}))
        note = interval_note(by_strategy)
        lines += [note[0].upper() + note[1:] + ".", ""]
        lines.append("| " + " | ".join(rows[0]) + " |")
        lines.append("|" + "---|" * len(rows[0]))
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        scratch_times = report.scratch.get(target, {}).get("time_to_threshold")
        if scratch_times is not None and scratch_times.n and scratch_times.low >= config.budget:
            lines += [
                "",
                f"Scratch did not reach the threshold within the budget on most seeds (median censored at "
                f"{config.budget:,}): its real time is longer, so every speed-up here is a lower bound.",
            ]
        lines += ["", *_test_rows(report.verdicts[target]), ""] + [
            f"- `{name}`: "
            + ("fresh weights, same budget (the baseline)" if name == "scratch" else _describe_strategy(spec))
            for name, spec in plan.strategies.items()
        ]
        lines.append("")
    lines += ["## Across targets (rliable)", "", *format_aggregate(report.aggregate), ""]
    if report.aggregate.strategies:
        lines += [
            "![IQM, probability of improvement, performance profile and sample efficiency](aggregate.png)",
            "",
        ]
    lines += ["## Learning curves", "", "![learning curves](curves.png)", ""]
    if report.failed:
        lines += ["## Failed runs", ""] + [f"- `{k}`: {v}" for k, v in report.failed.items()] + [""]
    if report.retried:
        lines += ["## Runs retried after their worker died", ""]
        lines += [f"- `{k}`: started again {n} time{'s' if n > 1 else ''}" for k, n in report.retried.items()]
        lines.append("")
    return "\n".join(lines)


def _test_rows(verdicts: dict[str, Verdict]) -> list[str]:
    lines = [
        "| strategy | test | mean paired difference | seeds | p | p (Holm) | significant |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"steps_saved": "steps saved", "asymptotic_gain": "asymptotic gain", "auc_gain": "area gain"}
    for strategy, verdict in verdicts.items():
        for test in verdict.tests:
            lines.append(
                f"| {strategy} | {test.metric} | {names[test.difference]} {test.mean:,.1f} | {test.n} | "
                f"{test.pvalue:.4f} | {test.adjusted:.4f} | {'yes' if test.significant else 'no'} |"
            )
    return lines


def _command() -> str:
    if Path(sys.argv[0]).name in ("rltransfer", "cli.py", "__main__.py"):
        return "`" + " ".join(["rltransfer", *sys.argv[1:]]) + "`"
    return "`rltransfer study` with the config below"


def _describe_strategy(spec: dict[str, Any]) -> str:
    parts = []
    if spec.get("combine"):
        hidden = spec["combine"]["hidden"]
        above = f"new layers {hidden} and new heads" if hidden else "new heads"
        parts.append(
            f"the source's and {spec['combine']['source']}'s trunks frozen side by side, their features "
            f"concatenated under {above}"
        )
    if spec["freeze"]:
        parts.append("frozen: " + ", ".join(spec["freeze"]))
    if spec["reinit"]:
        parts.append("re-initialised: " + ", ".join(spec["reinit"]))
    if spec.get("unfreeze_at"):
        parts.append(f"unfrozen after {spec['unfreeze_at']:,} steps")
    if spec.get("layer_map"):
        parts.append("mapped: " + ", ".join(f"{t} <- {s}" for t, s in spec["layer_map"].items()))
    if spec.get("chain"):
        stages = " -> ".join(f"{stage['env']['id']} ({stage['budget']:,} steps)" for stage in spec["chain"])
        extra = sum(stage["budget"] for stage in spec["chain"])
        parts.append(
            f"chain: source -> {stages} -> target; the table counts target steps only, the chain spent "
            f"{extra:,} more steps per seed on the intermediate games"
        )
    if spec.get("agent"):
        parts.append(f"agent overrides: {spec['agent']}")
    return "; ".join(parts) or "every layer that fits copied, all trained"


def _source_line(plan: StudyPlan) -> str:
    if plan.config.source.auto:
        return f"chosen per target among {len(plan.config.source.candidates)} candidates (below, per target)"
    return str(plan.source_path or plan.study_dir / "source")


def _selection_lines(plan: StudyPlan, target: str) -> list[str]:
    """How a target's source was chosen: the probe's ranking, and what it advised."""
    selection = plan.selections[target]
    probe = (
        "zero-shot"
        if not selection.finetune_steps
        else f"after {selection.finetune_steps:,} fine-tuning steps"
    )
    lines = [
        f"Source: {plan.target_sources[target]}, chosen by a probe ({probe}, {selection.episodes} episodes against "
        f"a random policy's {selection.random_mean:.1f}; paired sign-flip test at 5%, Holm-corrected):",
        "",
        "| candidate | mean return | p against random (Holm) | beats random |",
        "|---|---|---|---|",
    ]
    for candidate in selection.candidates:
        if candidate.error is not None:
            lines.append(f"| {candidate.source} | - | - | not probed: {candidate.error} |")
        else:
            lines.append(
                f"| {candidate.source} | {candidate.mean_return:.1f} | {candidate.p_value:.3f} | "
                f"{'yes' if candidate.beats_random else 'no'} |"
            )
    if selection.chosen is None:
        lines += [
            "",
            "No candidate beat a random policy here, so the probe advised learning from scratch; the transfer "
            "runs start from the best-ranked candidate so that the table shows whether that advice was right.",
        ]
    return lines


def _json(plan: StudyPlan, report: StudyReport, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "config": plan.config.model_dump(mode="json"),
        "versions": versions(),
        "source": (
            {target: str(path) for target, path in plan.target_sources.items()}
            if plan.config.source.auto
            else str(plan.source_path or plan.study_dir / "source")
        ),
        "selections": {target: selection.to_dict() for target, selection in plan.selections.items()},
        "thresholds": plan.thresholds,
        "strategies": plan.strategies,
        "metrics": {t: {s: m.as_dict() for s, m in by.items()} for t, by in report.metrics.items()},
        "verdicts": {t: {s: v.as_dict() for s, v in by.items()} for t, by in report.verdicts.items()},
        "scratch": {t: {k: json_safe(asdict(v)) for k, v in s.items()} for t, s in report.scratch.items()},
        "aggregate": report.aggregate.as_dict(),
        "runs": {
            key: {k: v for k, v in record.items() if k != "traceback"}
            for key, record in sorted(results.items())
        },
        "failed": report.failed,
        "retried": report.retried,
    }


def mean_band(
    curves: list[list], resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean return across seeds and a bootstrap 95% band of the mean, on the shortest common grid."""
    length = min(len(curve) for curve in curves)
    data = np.asarray([[point[1] for point in curve[:length]] for curve in curves], dtype=float)
    steps = np.asarray([point[0] for point in curves[0][:length]], dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(curves), size=(resamples, len(curves)))
    means = data[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return steps, data.mean(axis=0), low, high


def _figure(plan: StudyPlan, curves: dict[str, dict[str, dict[int, list]]]) -> Figure:
    targets = list(plan.thresholds)
    figure = Figure(figsize=(5.5 * len(targets), 4))
    axes = figure.subplots(1, len(targets), squeeze=False)
    for axis, target in zip(axes[0], targets, strict=True):
        for strategy in plan.strategies:
            runs = list(curves.get(target, {}).get(strategy, {}).values())
            if not runs:
                continue
            steps, mean, low, high = mean_band(runs)
            style = {"color": "black", "linestyle": "--"} if strategy == "scratch" else {}
            (line,) = axis.plot(steps, mean, label=f"{strategy} ({len(runs)} seeds)", **style)
            axis.fill_between(steps, low, high, alpha=0.2, color=line.get_color())
        axis.axhline(plan.thresholds[target], color="grey", linewidth=0.8, linestyle=":")
        axis.set_title(f"{target}: mean, bootstrap band (indicative)", fontsize=9)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("evaluation return")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _save_png(figure: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110, format="png")


def _tensorboard(
    plan: StudyPlan,
    curves: dict[str, dict[str, dict[int, list]]],
    report: StudyReport,
    figures: dict[str, Any],
) -> None:
    """``summary/<target>/<strategy>``: mean curve over seeds (strategies overlay), metrics, hparams, the plot."""
    root = plan.study_dir / "summary"
    if root.exists():
        shutil.rmtree(root)  # rebuilt whole from the stored results on every report
    for target in plan.thresholds:
        for strategy in plan.strategies:
            runs = list(curves.get(target, {}).get(strategy, {}).values())
            if not runs:
                continue
            writer = SummaryWriter(str(root / target / strategy))
            steps, mean, low, high = mean_band(runs)
            for step, m, lo, hi in zip(steps, mean, low, high, strict=True):
                writer.add_scalar("study/mean_return", m, int(step))
                writer.add_scalar("study/mean_return_ci_low", lo, int(step))
                writer.add_scalar("study/mean_return_ci_high", hi, int(step))
            result = report.metrics.get(target, {}).get(strategy)
            scalars = {}
            if result is not None:
                for name in (
                    "jumpstart",
                    "asymptotic_gain",
                    "transfer_ratio",
                    "time_to_threshold",
                    "speedup",
                ):
                    value = result.summary[name].median
                    if math.isfinite(value):
                        writer.add_scalar(f"metrics/{name}", value, 0)
                        scalars[f"metrics/{name}"] = value
                scalars["metrics/negative_transfer"] = float(
                    report.verdicts[target][strategy].negative_transfer
                )
            else:
                scalars["metrics/speedup"] = 1.0
            writer.add_hparams(
                {
                    "target": target,
                    "strategy": strategy,
                    "seeds": len(runs),
                    "frozen": ", ".join(plan.strategies[strategy]["freeze"]) or "none",
                },
                scalars,
                run_name=".",
            )
            writer.close()
    writer = SummaryWriter(str(root / "figures"))
    for tag, figure in figures.items():
        writer.add_figure(tag, figure, 0, close=True)
    for score, by_strategy in report.aggregate.iqm.items():
        for strategy, (point, _, _) in by_strategy.items():
            writer.add_scalar(f"aggregate/iqm_{score}/{strategy}", point, 0)
    for score, by_strategy in report.aggregate.improvement.items():
        for strategy, (point, _, _) in by_strategy.items():
            writer.add_scalar(f"aggregate/probability_of_improvement_{score}/{strategy}", point, 0)
    writer.add_text("study/report", "\n".join("    " + line for line in report.table.splitlines()), 0)
    writer.close()
