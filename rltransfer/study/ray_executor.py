"""A study on a Ray cluster: each run is a Ray task; nothing assumes the workers share the driver's disk.

The source agent goes to the workers once, through Ray's object store; each run trains in a temporary folder
on its worker and comes back whole (curve, ``run.json``, models, TensorBoard events, checkpoint) as one archive
that the driver unpacks into the study directory, replacing the run directory at once. A run whose worker
process dies is retried; Ctrl-C asks running runs to save a checkpoint and bring it back, so ``--resume``
continues them with either backend. Ray is an optional extra: ``pip install "rltransfer[ray]"``.
"""

from __future__ import annotations

import io
import ipaddress
import os
import shutil
import signal
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rltransfer.core.errors import ConfigError
from rltransfer.core.interrupt import request_stop, stop_requested
from rltransfer.core.io import prepare_run_dir, release_run_dir, write_json, write_text
from rltransfer.study.execute import RESULT, execute_run, finished_elsewise, resumable
from rltransfer.study.executor import OnRecord
from rltransfer.study.plan import RunSpec

SOURCE_FILES = ("best_model.zip", "config.yaml", "run.json")  # what reading a run-directory source needs
_POLL_SECONDS = 0.5


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            'The ray backend needs Ray: pip install "rltransfer[ray]" (or run the study with --backend local).'
        ) from None
    return ray


@dataclass
class RayExecutor:
    """Runs each study run as a Ray task: on the cluster at `address`, or on a Ray started in this process
    (on 127.0.0.1) when there is none. `cpus_per_run` and `gpus_per_run` (fractions allowed) are the resources
    each run reserves; a run whose worker dies is retried up to `retries` times."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    retries: int = 2
    retried: dict[str, int] = field(default_factory=dict)
    """Run key -> how many times it was started again after its worker died."""

    _started_here: bool = False

    @property
    def description(self) -> str:
        return f"on the Ray cluster at {self.address}" if self.address else "on Ray on this machine"

    @property
    def slots(self) -> int:
        """Runs that go at once: the cluster's CPUs over each run's share."""
        ray = import_ray()
        if not ray.is_initialized():
            self.check()
        return max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_run))

    def check(self) -> None:
        """Join (or start) Ray and check that a run fits the cluster's resources: before anything trains."""
        ray = import_ray()
        if not ray.is_initialized():
            connect(ray, self.address)
            self._started_here = True
        try:
            self._check_resources(ray)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Shut down the Ray this executor started (a cluster it joined keeps running)."""
        if self._started_here:
            import_ray().shutdown()
            self._started_here = False

    def run(self, specs: Sequence[RunSpec], on_record: OnRecord) -> int | None:
        ray = import_ray()
        if not ray.is_initialized():
            self.check()
        return self._run(ray, specs, on_record)

    def _check_resources(self, ray: Any) -> None:
        resources = ray.cluster_resources()
        where = f"the Ray cluster at {self.address}" if self.address else "this machine"
        if self.gpus_per_run > 0 and resources.get("GPU", 0) < self.gpus_per_run:
            raise ConfigError(
                f"`execution.gpus_per_run` is {self.gpus_per_run:g} but {where} has "
                f"{resources.get('GPU', 0):g} GPUs, so no run could start. Set gpus_per_run: 0 to run on CPUs, "
                "or join nodes with GPUs to the cluster."
            )
        if resources.get("CPU", 0) < self.cpus_per_run:
            raise ConfigError(
                f"`execution.cpus_per_run` is {self.cpus_per_run:g} but {where} has {resources.get('CPU', 0):g} "
                "CPUs, so no run could start. Lower cpus_per_run."
            )

    def _run(self, ray: Any, specs: Sequence[RunSpec], on_record: OnRecord) -> int | None:
        task = ray.remote(_remote_run).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0
        )
        flag = ray.remote(num_cpus=0)(_StopFlag).remote()
        sources: dict[str, Any] = {}  # source path -> the archive in the object store (put once)

        def submit(spec: RunSpec, attempt: int) -> Any:
            source = spec.config.get("source")
            bundle = None
            if source is not None:
                if source not in sources:
                    sources[source] = ray.put(pack_source(Path(source)))
                bundle = sources[source]
            checkpoint = pack_dir(spec.run_dir) if resumable(spec.run_dir, spec.fingerprint) else None
            ref = task.remote(spec.kind, spec.config, spec.fingerprint, bundle, checkpoint, flag)
            running[ref] = (spec, attempt)
            return ref

        running: dict[Any, tuple[RunSpec, int]] = {}
        try:
            for spec in specs:
                submit(spec, 0)
            stopping: int | None = None
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_SECONDS)
                for ref in ready:
                    spec, attempt = running.pop(ref)
                    self._finish(ray, ref, spec, attempt, on_record, submit, stopping)
                if stopping is None and (signum := stop_requested()) is not None:
                    stopping = (
                        signum  # running runs save a checkpoint and come back; queued ones do not start
                    )
                    ray.get(flag.set.remote())
            return stopping
        except BaseException:
            # a second Ctrl-C or another error: stop every run now; finished runs' results are stored already
            for ref in running:
                ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(flag)

    def _finish(
        self, ray: Any, ref: Any, spec: RunSpec, attempt: int, on_record: OnRecord, submit: Any, stopping: Any
    ) -> None:
        try:
            record, archive = ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if attempt < self.retries and stopping is None:
                self.retried[spec.key] = attempt + 1
                print(f"{spec.key}: its worker died ({reason}); starting it again.", flush=True)
                submit(spec, attempt + 1)
                return
            record = {
                "status": "failed",
                "error": f"worker process died ({reason}) on each of {attempt + 1} attempts",
                "seconds": 0.0,
            }
            on_record(spec, record)
            return
        except ray.exceptions.RayError as error:
            on_record(spec, {"status": "failed", "error": f"{type(error).__name__}: {error}", "seconds": 0.0})
            return
        if record["status"] == "not started":
            return  # the study was stopping before this run began
        if spec.key in self.retried:
            record["retries"] = self.retried[spec.key]
        if finished_elsewise(
            spec.run_dir
        ):  # a finished run of other settings: kept aside, as the local pool does
            release_run_dir(spec.run_dir)
            prepare_run_dir(spec.run_dir.parent, spec.run_dir.name)
            release_run_dir(spec.run_dir)
        unpack_dir(archive, spec.run_dir)
        if record["status"] == "finished" and spec.key in self.retried:
            write_json(spec.run_dir / RESULT, record)
        on_record(spec, record)


class _StopFlag:
    """A Ray actor the driver sets on Ctrl-C; each running run polls it and stops with a checkpoint."""

    def __init__(self) -> None:
        self.stopped = False

    def set(self) -> None:
        self.stopped = True

    def is_set(self) -> bool:
        return self.stopped


def connect(ray: Any, address: str | None) -> None:
    """Join the cluster at `address`, or start Ray in this process, listening on 127.0.0.1 only."""
    if address is None or _is_loopback(address):
        _keep_to_loopback()
    if address:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConfigError(
                f"Could not join the Ray cluster at {address}: {error}. Start one with `ray start --head` (its "
                "output gives the address), or leave the address out to run Ray on this machine."
            ) from None
        return
    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _keep_to_loopback() -> None:
    """Ray on Linux replaces a loopback address (the one to join, or this node's own) with the machine's
    network address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which it reads when first imported: set it for
    the processes Ray starts, and in this process's copy of the setting when Ray was imported already."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - a Ray laid out otherwise reads the variable when it needs it
        return
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in (
        "1",
        "true",
    )


def _remote_run(
    kind: str,
    config: dict[str, Any],
    fingerprint: str,
    source_archive: bytes | None,
    checkpoint_archive: bytes | None,
    flag: Any,
) -> tuple[dict[str, Any], bytes]:
    """One study run on a Ray worker, in a temporary folder of its own: returns its record and its run directory
    as an archive."""
    import ray
    import torch

    if ray.get(flag.is_set.remote()):
        return {"status": "not started"}, b""
    torch.set_num_threads(1)  # the same thread count as the local pool: the same curves for the same seeds
    scratch = Path(tempfile.mkdtemp(prefix="rltransfer-run-"))
    try:
        home = {str(scratch / "runs"): config["log_root"]}  # worker path -> the driver's, for the records
        config = dict(config, log_root=str(scratch / "runs"))
        if config.get("device", "auto") == "auto" and not ray.get_gpu_ids():
            config["device"] = (
                "cpu"  # no GPU share reserved for this run: leave the node's GPUs to runs that did
            )
        if source_archive is not None:
            here = unpack_source(source_archive, scratch / "source")
            home = {str(here): config["source"], **home}
            config["source"] = str(here)
        run_dir = scratch / "runs" / config["name"]
        if checkpoint_archive is not None:
            unpack_dir(checkpoint_archive, run_dir)
        watcher = threading.Thread(target=_watch, args=(ray, flag), daemon=True)
        watcher.start()
        record = execute_run(kind, config, str(run_dir), fingerprint)
        _relocate(run_dir, home)
        return record, pack_dir(run_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _watch(ray: Any, flag: Any) -> None:
    """Turn the driver's stop into the run's own clean stop (as SIGTERM would)."""
    while True:
        try:
            if ray.get(flag.is_set.remote()):
                request_stop(signal.SIGTERM)  # asked again each poll: a run entering its loop clears requests
        except Exception:
            return  # the driver is gone: the run is being cancelled anyway
        time.sleep(_POLL_SECONDS)


def _relocate(run_dir: Path, home: dict[str, str]) -> None:
    """Name the driver's paths, not the worker's temporary ones, in the run's config and record (chain stages
    included): where the run lives and which source it came from."""
    for path in [*run_dir.rglob("config.yaml"), *run_dir.rglob("run.json")]:
        text = original = path.read_text(encoding="utf-8")
        for worker_path, driver_path in home.items():
            text = text.replace(worker_path, driver_path)
        if text != original:
            write_text(path, text)


def pack_dir(folder: Path) -> bytes:
    """A run directory as a gzipped tar (its lock file left out)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.name != ".lock" and path.is_file():
                    archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def unpack_dir(data: bytes, folder: Path) -> None:
    """Replace `folder` with the archive's contents: unpacked beside it first, then swapped in by renames, so
    the folder is never half-written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{folder.name}.incoming-", dir=folder.parent))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        _extract(archive, incoming)
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        folder.rename(old)
    incoming.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pack_source(source: Path) -> bytes:
    """The files of a source agent that reading it needs: a run directory's model, config and record, or an SB3
    .zip with the config and record beside it."""
    buffer = io.BytesIO()
    folder, model = (source, None) if source.is_dir() else (source.parent, source.name)
    names = SOURCE_FILES if model is None else (model, "config.yaml", "run.json")
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in names:
            if (folder / name).is_file():
                archive.add(folder / name, arcname=name, recursive=False)
        archive.addfile(_marker(model or ""), io.BytesIO((model or "").encode()))
    return buffer.getvalue()


def unpack_source(data: bytes, folder: Path) -> Path:
    """Unpack :func:`pack_source`'s archive; returns the path to give as ``source``."""
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        _extract(archive, folder)
    model = (folder / _MARKER).read_text(encoding="utf-8")
    (folder / _MARKER).unlink()
    return folder / model if model else folder


_MARKER = ".source-file"  # inside a source archive: the model file's name when the source was a .zip


def _marker(model: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(_MARKER)
    info.size = len(model.encode())
    return info


def _extract(archive: tarfile.TarFile, folder: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # refuses absolute paths and links out of the folder
        archive.extractall(folder, filter="data")
    else:  # pragma: no cover - Pythons before 3.11.4; the archives are the study's own
        archive.extractall(folder)
