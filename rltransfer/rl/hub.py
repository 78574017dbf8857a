"""Sources on the Hugging Face Hub: ``hf://ORG/REPO`` (the SB3 convention: the agent is ``REPO.zip``) or
``hf://ORG/REPO/FILE.zip``, fetched by ``huggingface_hub`` into its cache (offline mode and cache settings are
the library's own: ``HF_HUB_OFFLINE``, ``HF_HOME``), with the repo's ``vec_normalize.pkl`` beside it when it has
one."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from rltransfer.core.errors import ConfigError, TransferError

HUB = "hf://"
VEC_NORMALIZE = "vec_normalize.pkl"


def is_hub(source: str | Path) -> bool:
    return str(source).startswith(HUB)


def _import_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(
            'Sources on the Hugging Face Hub (hf://...) need huggingface_hub: pip install "rltransfer[hub]".'
        ) from None
    return huggingface_hub


def split_hub(source: str) -> tuple[str, str]:
    """``hf://ORG/REPO`` -> (ORG/REPO, REPO.zip); ``hf://ORG/REPO/FILE.zip`` -> (ORG/REPO, FILE.zip)."""
    parts = source[len(HUB) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"`source` {source!r}: a Hub source is hf://ORG/REPO (e.g. hf://sb3/ppo-CartPole-v1) or "
            "hf://ORG/REPO/FILE.zip."
        )
    repo = "/".join(parts[:2])
    filename = "/".join(parts[2:]) or f"{parts[1]}.zip"
    return repo, filename


def fetch(source: str) -> Path:
    """The local path of a Hub source's zip (downloaded into the Hub cache once, then read from it), with the
    repo's vec_normalize.pkl fetched beside it when the repo has one."""
    hub = _import_hub()
    repo, filename = split_hub(source)
    try:
        path = Path(hub.hf_hub_download(repo_id=repo, filename=filename))
    except Exception as error:  # offline and not cached, no such repo or file, no network
        raise TransferError(
            f"Cannot get {filename} of {repo} from the Hugging Face Hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}). Online, check the repo and file "
            "names; offline (HF_HUB_OFFLINE=1), the file must already be in the Hub cache."
        ) from None
    folder = str(Path(filename).parent) if "/" in filename else ""
    scaling = f"{folder}/{VEC_NORMALIZE}" if folder else VEC_NORMALIZE
    cached = hub.try_to_load_from_cache(repo_id=repo, filename=scaling)
    if isinstance(cached, str):
        return path
    if cached is not None:  # the cache knows the repo has no such file
        return path
    try:
        hub.hf_hub_download(repo_id=repo, filename=scaling)
    except hub.errors.EntryNotFoundError:
        pass  # the repo has none: the agent takes raw observations
    except Exception:  # offline and not cached: whether the repo has one is unknown
        warnings.warn(
            f"Could not check whether {repo} has a {VEC_NORMALIZE} (offline, or the Hub did not answer). If the "
            "agent was trained with VecNormalize, fetch it once online: without it the observations go in "
            "unscaled.",
            stacklevel=2,
        )
    return path
