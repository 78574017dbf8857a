"""Image classifiers for transfer: torchvision architectures by name, timm's (``timm/<name>``), a small built-in
CNN, weights from a file or the libraries' registries, and a head (plus auxiliary heads) replaced for the
target's classes."""

from __future__ import annotations

import copy
import json
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rltransfer.core.errors import ConfigError, TransferError, did_you_mean, short_list, unpickler_reason
from rltransfer.core.heads import find_head, replace_head

SMALL_CNN = "small_cnn"
TIMM = "timm/"  # model.arch prefix of a timm model, built with timm.create_model
CUSTOM = "custom:"  # spec.arch prefix of a model trained from the user's own nn.Module
# architectures tested with every head layout they have; other torchvision classification models whose output
# layer is a Linear work too (squeezenet's is a convolution: use your own module or replace_head by name)
TESTED_ARCHITECTURES: tuple[str, ...] = (
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
    "inception_v3",
    "googlenet",
)
# auxiliary classifiers torchvision attaches to intermediate layers (they only answer in training mode)
AUX_HEADS: tuple[str, ...] = ("AuxLogits.fc", "aux1.fc2", "aux2.fc2")
AUX_LOSS_WEIGHT = {"AuxLogits.fc": 0.4, "aux1.fc2": 0.3, "aux2.fc2": 0.3}
# the smallest input each architecture accepts (inception_v3 and vit_b_16 have fixed needs)
MIN_INPUT = {"inception_v3": 299, "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224}
MODEL_FILE = "model.pt"
SPEC_FILE = "model.json"


def require_torchvision() -> Any:
    """Import torchvision, or explain which extra installs it."""
    try:
        import torchvision
    except ImportError:
        raise ConfigError(
            "Image transfer needs torchvision, which is not installed. Install the vision extra: "
            "pip install 'rltransfer[vision]' (or pip install torchvision matching your torch)."
        ) from None
    return torchvision


class SmallConvNet(nn.Module):
    """A three-block CNN for small images (the offline digits demo): ``features`` -> ``pool`` -> ``fc``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
        )
        # a 2x2 grid keeps where the strokes are, which global pooling would lose on tiny images
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)))


@dataclass
class ModelSpec:
    """Everything needed to rebuild a trained classifier from plain data (no pickled code): saved as model.json."""

    arch: str
    num_classes: int
    classes: list[str]
    in_channels: int = 3
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    dropout: float = 0.0
    head: str = ""
    aux_heads: list[str] = field(default_factory=list)
    second: str | None = None
    """The second trunk's architecture in a two-model network (:class:`TwoTrunks`); ``arch`` is the first's."""


def require_timm() -> Any:
    """Import timm, or explain which extra installs it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "`model.arch: timm/...` needs timm, which is not installed: pip install 'rltransfer[timm]' "
            "(or pip install timm)."
        ) from None
    return timm


def is_timm(model: nn.Module) -> bool:
    """A timm model: its classifier is reached through timm's own get_classifier / reset_classifier."""
    return type(model).__module__.startswith("timm.") and hasattr(model, "reset_classifier")


def _build_timm(arch: str, in_channels: int) -> nn.Module:
    timm = require_timm()
    name = arch[len(TIMM) :]
    names = timm.list_models()
    if name not in names:
        raise ConfigError(
            f"`model.arch`: timm has no model `{name}`{did_you_mean(name, names)}. List them with "
            '`python -c "import timm; print(timm.list_models())"`.'
        )
    return timm.create_model(name, pretrained=False, in_chans=in_channels)


def list_architectures() -> list[str]:
    """Names ``model.arch`` accepts: the built-in small CNN and torchvision's classification models."""
    torchvision = require_torchvision()
    return [SMALL_CNN, *torchvision.models.list_models(module=torchvision.models)]


def build_architecture(arch: str, in_channels: int = 3) -> nn.Module:
    """A randomly initialised network of the named architecture with its original head (1000 ImageNet classes)."""
    if arch == SMALL_CNN:
        return SmallConvNet(in_channels=in_channels)
    if arch.startswith(TIMM):
        return _build_timm(arch, in_channels)  # timm adapts its first layer to `in_chans` itself
    torchvision = require_torchvision()
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise ConfigError(
            f"`model.arch`: unknown architecture `{arch}`{did_you_mean(arch, names + [SMALL_CNN])}. Use "
            f"{SMALL_CNN}, a torchvision classification model ({short_list(names, 25)}) or timm/<name>."
        )
    if in_channels != 3:
        raise ConfigError(
            f"`model.arch`: {arch} takes 3-channel images but the data has {in_channels}. Set "
            "`data.channels: 3` (grey images are repeated over the three channels)."
        )
    kwargs: dict[str, Any] = {}
    if arch in ("inception_v3", "googlenet"):
        kwargs = {"aux_logits": True, "init_weights": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torchvision.models.get_model(arch, weights=None, **kwargs)


def load_weights(model: nn.Module, arch: str, weights: str) -> None:
    """Load ``weights`` into a freshly built ``arch``: a torchvision weight name (downloaded once into torch's
    cache, so it needs internet the first time), a ``.pt``/``.pth`` state dict, or an rltransfer image run."""
    path = Path(weights)
    if path.is_dir() or path.suffix in (".pt", ".pth", ".bin") or path.exists():
        state = read_state_dict(path, arch)
    else:
        state = _registry_state(arch, weights)
    missing, unexpected, wrong = _compare(model, state)
    if missing or unexpected or wrong:
        details = "; ".join(
            part
            for part in (
                f"missing {short_list(missing, 5)}" if missing else "",
                f"unexpected {short_list(unexpected, 5)}" if unexpected else "",
                f"other shapes {short_list(wrong, 5)}" if wrong else "",
            )
            if part
        )
        raise TransferError(
            f"The weights in {weights} do not fit a {arch}: {details}. They were saved from another architecture "
            "(or another input channel count); set `model.arch` to the architecture they came from."
        )
    model.load_state_dict(state)


def model_folder(path: Path) -> Path:
    """The folder holding model.json / model.pt: ``path`` itself, or the ``model/`` folder of a run directory."""
    if not (path / SPEC_FILE).is_file() and (path / "model" / SPEC_FILE).is_file():
        return path / "model"
    return path


def read_state_dict(path: Path, arch: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a file or run directory, read with PyTorch's weights-only loader (no code runs)."""
    if path.is_dir():
        path = model_folder(path)
        spec = read_spec(path)
        if arch is not None and spec.arch != arch:
            raise TransferError(
                f"{path} holds a {spec.arch}, not a {arch}. Set `model.arch: {spec.arch}` to transfer from it."
            )
        path = path / MODEL_FILE
    if not path.is_file():
        raise TransferError(f"Weights file {path} does not exist. Check the path in `model.weights`.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated, foreign or pickled-code files
        raise TransferError(
            f"Cannot read weights from {path}: {unpickler_reason(error)}. The file is truncated or is not a "
            "plain state dict of tensors (files that need unpickling code are refused)."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TransferError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return state


def _registry_state(arch: str, weights: str) -> dict[str, torch.Tensor]:
    if arch.startswith(TIMM):
        return _timm_state(arch, weights)
    if arch == SMALL_CNN:
        raise ConfigError(
            f"`model.weights`: {weights} is neither a file nor a run directory (the small CNN has no published "
            "weights). Give the path to a model.pt or to an rltransfer image run."
        )
    torchvision = require_torchvision()
    enum = torchvision.models.get_model_weights(arch)
    names = ["DEFAULT", *(member.name for member in enum)]
    if weights not in names:
        raise ConfigError(
            f"`model.weights`: `{weights}` is not a file, a run directory or a torchvision weight of {arch}"
            f"{did_you_mean(weights, names)}. Its weights: {', '.join(names)}."
        )
    try:
        return enum[weights].get_state_dict(progress=False)
    except Exception as error:
        raise TransferError(
            f"Could not fetch torchvision's {arch} weights {weights}: {error}. They download once into "
            "torch's cache; without internet, copy the .pth file here and give its path in `model.weights`."
        ) from None


def _timm_state(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """timm's published weights: ``pretrained`` (the model's default tag) or a tag such as ``in1k``; downloaded
    by timm from the Hugging Face Hub into its cache (so they need internet the first time)."""
    timm = require_timm()
    name = arch[len(TIMM) :]
    tag = "" if weights in ("pretrained", "DEFAULT") else weights
    try:
        model = timm.create_model(f"{name}.{tag}" if tag else name, pretrained=True)
    except Exception as error:  # no internet, unknown tag, a hub error
        raise TransferError(
            f"Could not fetch timm's {name} weights `{weights}`: {str(error).splitlines()[0]}. They download once "
            "into the Hugging Face cache; without internet, save the state dict to a .pt file and give its path "
            "in `model.weights`."
        ) from None
    return model.state_dict()


def _compare(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    wrong = [key for key in own if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    return missing, unexpected, wrong


def head_names(model: nn.Module) -> tuple[str, list[str]]:
    """The main output layer's name and the names of the auxiliary heads present in the model."""
    modules = dict(model.named_modules())
    head = find_head(model)
    return head, [name for name in AUX_HEADS if isinstance(modules.get(name), nn.Linear)]


def set_classes(
    model: nn.Module, num_classes: int, dropout: float = 0.0, example_input: torch.Tensor | None = None
) -> tuple[str, list[str]]:
    """Replace the head (and every auxiliary head) with fresh layers for ``num_classes``; with ``dropout`` > 0 the
    main head becomes ``Sequential(dropout, linear)`` under the same name. Checks the output with a dummy forward
    in both modes when ``example_input`` is given. Returns (head name, auxiliary head names)."""
    _unwrap_dropout_heads(model)
    if is_timm(model):
        head, aux, linear = _reset_timm_classifier(model, num_classes)
    else:
        head, aux = head_names(model)
        for name in aux:
            replace_head(model, num_classes, name=name)
        linear = replace_head(model, num_classes, name=head)
    if dropout > 0:
        _set_module(model, head, DropoutHead(dropout, linear))
    if example_input is not None:
        check_outputs(model, num_classes, example_input, aux)
    return head, aux


def _reset_timm_classifier(model: nn.Module, num_classes: int) -> tuple[str, list[str], nn.Linear]:
    """timm's own head API: ``reset_classifier`` builds the new head (keeping the model's pooling), whose name is
    where ``get_classifier`` finds it."""
    model.reset_classifier(num_classes)
    classifier = model.get_classifier()
    name = next((n for n, module in model.named_modules() if module is classifier), None)
    if not isinstance(classifier, nn.Linear) or not name:
        raise TransferError(
            f"timm's {type(model).__name__} has a {type(classifier).__name__} classifier, not a Linear layer: "
            "rltransfer cannot put a new head there. Use your own module (run_image(model=...))."
        )
    return name, [], classifier


class DropoutHead(nn.Sequential):
    """The new head with dropout before it: ``dropout`` then ``linear``."""

    def __init__(self, p: float, linear: nn.Linear) -> None:
        super().__init__(OrderedDict(dropout=nn.Dropout(p), linear=linear))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _unwrap_dropout_heads(model: nn.Module) -> None:
    """Put back the plain Linear of a head wrapped by an earlier ``set_classes`` (a transferred rltransfer model)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, DropoutHead):
            _set_module(model, name, module.linear)


def check_outputs(model: nn.Module, num_classes: int, example: torch.Tensor, aux: list[str]) -> None:
    """Dummy forward in eval and training mode: every output (auxiliary ones included) must have `num_classes`.
    The model's buffers are put back afterwards: a training-mode forward would move BatchNorm's running
    statistics of a pretrained trunk toward the dummy input's."""
    was_training = model.training
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        for mode in (False, True):
            model.train(mode)
            try:
                with torch.no_grad():
                    outputs = model(example)
            except RuntimeError as error:
                raise ConfigError(
                    f"The model cannot take {tuple(example.shape[1:])} inputs ({str(error).splitlines()[0]}). "
                    "Raise `data.image_size` (or set `data.channels`) to what the architecture needs."
                ) from None
            logits, aux_logits = split_outputs(outputs)
            shapes = [tuple(t.shape) for t in [logits, *aux_logits]]
            if any(shape[-1] != num_classes for shape in shapes) or (mode and len(aux_logits) != len(aux)):
                raise TransferError(
                    f"After replacing the heads the model outputs {shapes} in "
                    f"{'training' if mode else 'eval'} mode, not {num_classes} classes per output: its "
                    "output layer is not where rltransfer looked. Use your own module (run_image(model=...))."
                )
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])


def split_outputs(outputs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main logits, auxiliary logits) from a plain tensor or torchvision's Inception/GoogLeNet output tuples."""
    if isinstance(outputs, torch.Tensor):
        return outputs, []
    if isinstance(outputs, tuple) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0], [t for t in outputs[1:] if isinstance(t, torch.Tensor)]
    raise TransferError(f"The model returned a {type(outputs).__name__}, not logits.")


def build_classifier(
    spec: ModelSpec, weights: str | None = None, second_weights: str | None = None
) -> nn.Module:
    """The architecture of ``spec`` with its heads set to ``spec.num_classes``, optionally from ``weights``
    (loaded before the heads are replaced, so a source with other classes still transfers its trunk). With
    ``spec.second`` it is a :class:`TwoTrunks` network, the second trunk from ``second_weights``."""
    if spec.second is not None:
        return build_pair(spec, weights, second_weights)
    model = build_architecture(spec.arch, spec.in_channels)
    if weights:
        _load_source(model, spec.arch, weights)
    example = torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size)
    spec.head, spec.aux_heads = set_classes(model, spec.num_classes, spec.dropout, example)
    return model


def _load_source(model: nn.Module, arch: str, weights: str) -> None:
    """Load ``weights`` into a freshly built ``arch``; an rltransfer run gets its own head layout first."""
    source = _source_spec(weights)
    if source is not None:  # an rltransfer run: its own head layout and class count
        set_classes(model, source.num_classes, source.dropout)
    load_weights(model, arch, weights)


def _source_spec(weights: str) -> ModelSpec | None:
    """The model.json of an rltransfer run given as weights (None for a file or a registry name); a two-trunk
    network is refused: its weights are not those of one architecture."""
    path = model_folder(Path(weights))
    if not (path.is_dir() and (path / SPEC_FILE).is_file()):
        return None
    spec = read_spec(path)
    if spec.second is not None:
        raise TransferError(
            f"{weights} holds a two-model network ({spec.arch} + {spec.second}, `model.second`), not one "
            f"{spec.arch}: it cannot be the starting weights of a network. Give the runs (or files) of its two "
            "sources as `model.weights` and `model.second.weights` instead; to classify with it, use "
            "`rltransfer image predict`."
        )
    return spec


def read_spec(run_dir: Path) -> ModelSpec:
    """The model.json of a trained image classifier."""
    spec_path = run_dir / SPEC_FILE
    if not spec_path.is_file():
        raise TransferError(
            f"{run_dir} has no {SPEC_FILE}: it is not a trained rltransfer image model. Give a run directory "
            "made by `rltransfer image` (or its model/ folder)."
        )
    try:
        data = json.loads(spec_path.read_text(encoding="utf-8"))
        return ModelSpec(**data)
    except (ValueError, TypeError) as error:
        raise TransferError(f"{spec_path} is damaged or from another version: {error}.") from None


def spec_dict(spec: ModelSpec) -> dict[str, Any]:
    """``spec`` as plain JSON-ready data."""
    return asdict(spec)


def reset_parameters(model: nn.Module) -> None:
    """Re-initialise every submodule that knows how (``reset_parameters``), as PyTorch does at construction."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def adopt_module(custom: nn.Module, spec: ModelSpec, weights: str | None, fresh: bool = False) -> nn.Module:
    """A copy of the user's module: re-initialised (``fresh``), or with ``weights`` from a state dict or an earlier
    run of the same module, its heads then set for ``spec``'s classes."""
    model = copy.deepcopy(custom)
    if fresh:
        reset_parameters(model)
    elif weights:
        path = model_folder(Path(weights))
        source = _source_spec(weights)
        if source is not None:
            set_classes(model, source.num_classes, source.dropout)
        state = read_state_dict(path)
        missing, unexpected, wrong = _compare(model, state)
        if missing or unexpected or wrong:
            raise TransferError(
                f"The weights in {weights} do not fit this {type(custom).__name__}: missing "
                f"{short_list(missing, 5) or 'none'}, unexpected {short_list(unexpected, 5) or 'none'}, other "
                f"shapes {short_list(wrong, 5) or 'none'}."
            )
        model.load_state_dict(state)
    example = torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size)
    spec.head, spec.aux_heads = set_classes(model, spec.num_classes, spec.dropout, example)
    return model


def load_classifier(
    path: str | Path, device: str = "cpu", module: nn.Module | None = None
) -> tuple[nn.Module, ModelSpec]:
    """A trained classifier from a model folder (model.json + model.pt) or a run directory, weights-only.
    A model trained from your own ``nn.Module`` needs ``module``, an instance of that class."""
    path = Path(path)
    if not path.exists():
        raise TransferError(
            f"Model {path} does not exist (relative paths start at {Path.cwd()}). Give the run directory made by "
            "`rltransfer image` (or its model/ folder)."
        )
    if path.is_file():
        path = path.parent
    path = model_folder(path)
    spec = read_spec(path)
    if spec.arch.startswith(CUSTOM):
        if module is None:
            raise TransferError(
                f"{path} was trained from your own module {spec.arch[len(CUSTOM) :]}, which a file cannot "
                "rebuild safely. Load it from Python: load_classifier(path, module=YourModule(...))."
            )
        model = copy.deepcopy(module)
    elif spec.second is not None:
        model = bare_pair(spec)
    else:
        model = build_architecture(spec.arch, spec.in_channels)
    set_classes(model, spec.num_classes, spec.dropout)
    state = read_state_dict(path / MODEL_FILE)
    missing, unexpected, wrong = _compare(model, state)
    if missing or unexpected or wrong:
        raise TransferError(
            f"{path / MODEL_FILE} does not match its {SPEC_FILE} ({spec.arch}); the file is damaged."
        )
    model.load_state_dict(state)
    return model.to(device).eval(), spec


class TwoTrunks(nn.Module):
    """Two source networks' trunks side by side (model concatenation): ``first`` and ``second`` (each with its head
    removed) see the same images, and the new head ``fc`` reads their concatenated bottleneck features.

    :param first: the first trunk (its head replaced by ``nn.Identity``).
    :param second: the second trunk, likewise.
    :param features: the width of each trunk's output, in that order.
    :param num_classes: outputs of the new head.
    """

    def __init__(
        self, first: nn.Module, second: nn.Module, features: tuple[int, int], num_classes: int
    ) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.features = features
        self.fc = nn.Linear(sum(features), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.first(x).flatten(1), self.second(x).flatten(1)], dim=1))


def build_pair(spec: ModelSpec, weights: str | None, second_weights: str | None) -> nn.Module:
    """A :class:`TwoTrunks` network for ``spec``: the trunk of ``spec.arch`` from ``weights`` and the trunk of
    ``spec.second`` from ``second_weights`` (either None: random), then the new head for the classes."""
    assert spec.second is not None
    first, first_width = make_trunk(spec.arch, spec, weights, "model")
    second, second_width = make_trunk(spec.second, spec, second_weights, "model.second")
    model = TwoTrunks(first, second, (first_width, second_width), spec.num_classes)
    example = torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size)
    spec.head, spec.aux_heads = set_classes(model, spec.num_classes, spec.dropout, example)
    return model


def bare_pair(spec: ModelSpec) -> TwoTrunks:
    """The two-trunk layout of ``spec`` from random weights, without any check (its state dict is loaded next)."""
    assert spec.second is not None
    trunks = [_strip_head(build_architecture(arch, spec.in_channels)) for arch in (spec.arch, spec.second)]
    return TwoTrunks(trunks[0][0], trunks[1][0], (trunks[0][1], trunks[1][1]), spec.num_classes)


def make_trunk(arch: str, spec: ModelSpec, weights: str | None, key: str) -> tuple[nn.Module, int]:
    """(trunk, width of its output): ``arch`` built for the task's images, loaded from ``weights``, its head
    replaced by ``nn.Identity``. Errors name ``key`` (``model`` or ``model.second``) and say what to change."""
    try:
        if spec.image_size < MIN_INPUT.get(arch, 0):
            raise ConfigError(
                f"`model.arch`: {arch} needs inputs of at least {MIN_INPUT[arch]} pixels, but both models see the "
                f"task's images at {spec.image_size} pixels (preprocessed for `{spec.arch}`). Set "
                "`data.image_size` to what both architectures take."
            )
        model = build_architecture(arch, spec.in_channels)
        aux = [] if is_timm(model) else head_names(model)[1]
        if aux:  # checked before any weights are fetched
            raise ConfigError(
                f"`model.arch`: {arch} has auxiliary heads ({', '.join(aux)}) that answer from inside its trunk, "
                "which a two-model network cannot keep. Choose an architecture without them (resnet50, "
                "efficientnet_b0...)."
            )
        if weights:
            _load_source(model, arch, weights)
    except (ConfigError, TransferError) as error:
        raise _for_key(error, key) from None
    model, width = _strip_head(model)
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size))
    except (RuntimeError, AssertionError, ValueError) as error:
        raise ConfigError(
            f"`{key}.arch`: {arch} cannot take the task's {(spec.in_channels, spec.image_size, spec.image_size)} "
            f"images ({str(error).splitlines()[0] if str(error) else type(error).__name__}). Both models see the "
            "same preprocessed images: set `data.image_size`, `data.channels` and `data.normalize` to what both "
            "architectures take, or choose another architecture."
        ) from None
    if not isinstance(out, torch.Tensor) or out.flatten(1).shape[1] != width:
        raise TransferError(
            f"`{key}.arch`: without its head {arch} outputs {getattr(out, 'shape', type(out).__name__)}, not "
            f"{width} features per image: its output layer is not where rltransfer looked. Choose another "
            "architecture for a two-model network."
        )
    model.train()
    return model, width


def _strip_head(model: nn.Module) -> tuple[nn.Module, int]:
    """The model with its head replaced by ``nn.Identity`` and the width of what that head read."""
    _unwrap_dropout_heads(model)
    if is_timm(model):
        width = int(model.num_features)
        model.reset_classifier(0)
        return model, width
    linear = model.get_submodule(find_head(model))
    assert isinstance(linear, nn.Linear)
    _set_module(model, find_head(model), nn.Identity())
    return model, linear.in_features


def _for_key(error: ConfigError | TransferError, key: str) -> ConfigError | TransferError:
    """The same error with the settings it names moved under ``key`` (``model.second``)."""
    if key == "model":
        return error
    text = str(error).replace("`model.arch", f"`{key}.arch").replace("`model.weights", f"`{key}.weights")
    return type(error)(text)
