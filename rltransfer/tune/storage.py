"""Where trials live (Optuna's RDB storage: SQLite in the tuning directory by default) and the pruner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rltransfer.core.errors import ConfigError

SQLITE = "sqlite:///"


def import_optuna() -> Any:
    """Optuna, or an error naming the extra that installs it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            'rltransfer tune needs Optuna: pip install "rltransfer[tune]" (or pip install optuna).'
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # rltransfer prints each trial itself
    return optuna


def default_storage(tune_dir: Path) -> str:
    return f"{SQLITE}{(tune_dir / 'tune.db').resolve()}"


def open_storage(url: str, *, create: bool) -> Any:
    """Optuna's RDB storage at `url`. SQLite waits for a lock rather than failing when trials in several
    processes write at once; a worker (`create` False) refuses an SQLite file it cannot see (a cluster node
    without the driver's disk) instead of starting an empty one."""
    optuna = import_optuna()
    engine: dict[str, Any] = {}
    if url.startswith(SQLITE):
        path = Path(url[len(SQLITE) :])
        if not create and not path.is_file():
            raise ConfigError(
                f"The tuning storage {path} is not on this machine. Trials on a cluster of several machines need "
                "a database every machine reaches: set `storage` to its SQLAlchemy URL (e.g. "
                "postgresql://user@host/db)."
            )
        engine = {"connect_args": {"timeout": 120}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as error:  # a bad URL, a driver that is not installed, a database that does not answer
        raise ConfigError(f"`storage` {url}: {type(error).__name__}: {error}") from None


def make_pruner(spec: dict[str, Any]) -> Any:
    """The pruner a ``pruner`` config section names."""
    optuna = import_optuna()
    if spec["kind"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec["startup_trials"], n_warmup_steps=spec["warmup_evals"]
    )
