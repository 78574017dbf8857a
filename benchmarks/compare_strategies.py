"""Two strategies of a finished study against each other, on the same seeds: a method against plain fine-tuning.

    python benchmarks/compare_strategies.py STUDY_DIR METHOD BASELINE [--out FILE.json]

A study's verdicts compare every strategy with scratch. This reads the study's ``report.json`` and, for each
target, pairs METHOD's and BASELINE's runs seed by seed: the time to the threshold (a run that never reaches it
counts as the budget, as in the study), the area under the curve and the asymptotic return. Each metric gets the
same two-sided paired sign-flip test as the study's verdicts, Holm-corrected over the three metrics of a target;
a difference is stated only where the corrected p-value is below 5%, otherwise "no clear difference".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rltransfer.core.io import write_json
from rltransfer.study.stats import ALPHA, holm, sign_flip_pvalue

METRICS = (
    # metric, per-seed field, "better" when the method's value is... , words
    ("speed", "time_to_threshold", "lower", ("faster to the threshold", "slower to the threshold")),
    ("area", "auc", "higher", ("larger area under the curve", "smaller area under the curve")),
    ("asymptote", "asymptotic", "higher", ("higher asymptote", "lower asymptote")),
)


def compare(report: dict[str, Any], method: str, baseline: str) -> dict[str, Any]:
    """Per target: each metric's paired differences (method - baseline), p-values and the words they allow."""
    results: dict[str, Any] = {}
    for target, strategies in report["metrics"].items():
        if method not in strategies or baseline not in strategies:
            continue
        ours = {row["seed"]: row for row in strategies[method]["per_seed"]}
        theirs = {row["seed"]: row for row in strategies[baseline]["per_seed"]}
        seeds = sorted(set(ours) & set(theirs))
        tests: dict[str, dict[str, Any]] = {}
        for name, field, better, words in METRICS:
            differences = [float(ours[s][field]) - float(theirs[s][field]) for s in seeds]
            sign = -1.0 if better == "lower" else 1.0
            tests[name] = {
                "field": field,
                "differences": differences,
                "mean": sum(differences) / len(differences) if differences else float("nan"),
                "better_on": sum(1 for d in differences if sign * d > 0),
                "worse_on": sum(1 for d in differences if sign * d < 0),
                "pvalue": sign_flip_pvalue(differences),
                "words": words,
                "sign": sign,
            }
        adjusted = holm({name: test["pvalue"] for name, test in tests.items()})
        said = []
        for name, test in tests.items():
            test["adjusted"] = adjusted[name]
            if adjusted[name] <= ALPHA:
                said.append(test["words"][0] if test["sign"] * test["mean"] > 0 else test["words"][1])
        results[target] = {
            "seeds": seeds,
            "tests": {
                name: {k: v for k, v in test.items() if k not in ("words", "sign")}
                for name, test in tests.items()
            },
            "verdict": ", ".join(said) if said else "no clear difference",
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("method")
    parser.add_argument("baseline")
    parser.add_argument("--out", type=Path, default=None, help="also write the comparison as JSON")
    args = parser.parse_args(argv)
    path = args.study_dir / "report.json"
    if not path.is_file():
        print(f"error: {path} does not exist: give the directory of a finished study.", file=sys.stderr)
        return 2
    report = json.loads(path.read_text(encoding="utf-8"))
    results = compare(report, args.method, args.baseline)
    if not results:
        known = sorted({s for strategies in report["metrics"].values() for s in strategies})
        print(
            f"error: no target of {args.study_dir} has both `{args.method}` and `{args.baseline}`; its strategies "
            f"are: {', '.join(known)}.",
            file=sys.stderr,
        )
        return 2
    for target, result in results.items():
        print(f"{target}: {args.method} against {args.baseline}, {len(result['seeds'])} paired seeds")
        for name, test in result["tests"].items():
            print(
                f"  {name:9s} mean difference {test['mean']:+,.1f}  better on {test['better_on']}, worse on "
                f"{test['worse_on']}  p = {test['pvalue']:.3f}, Holm {test['adjusted']:.3f}"
            )
        print(f"  verdict: {result['verdict']}")
    if args.out is not None:
        write_json(args.out, {"study": str(args.study_dir), "method": args.method, "baseline": args.baseline,
                              "targets": results})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
