"""The study layer: plan (specifications of runs) -> executor (runs them) -> results -> metrics -> report."""

from rltransfer.study.config import StudyConfig
from rltransfer.study.executor import Executor, LocalExecutor
from rltransfer.study.plan import RunSpec, StudyPlan, plan_study
from rltransfer.study.report import StudyReport
from rltransfer.study.run import STUDY_CONFIG, run_study

__all__ = [
    "STUDY_CONFIG",
    "Executor",
    "LocalExecutor",
    "RunSpec",
    "StudyConfig",
    "StudyPlan",
    "StudyReport",
    "plan_study",
    "run_study",
]
