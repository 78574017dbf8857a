"""``rltransfer tune``: the transfer recipe that pays for one target, found with Optuna and confirmed against a
scratch control tuned with the same effort."""

from rltransfer.tune.config import TuneConfig
from rltransfer.tune.search import TUNE_CONFIG, run_tune

__all__ = ["TUNE_CONFIG", "TuneConfig", "run_tune"]
