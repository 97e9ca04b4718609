"""Models by name: registry, safetensors weights, and the weight hash.

A model name maps to a weights file inside the package; the file carries its
:class:`~neurocodec.models.ModelConfig` as metadata, so name -> file -> model
needs no other source of truth. The weight hash (over every tensor in the
file, the model's integer entropy tables included) is written into each stream, and a decoder
whose weights differ refuses the stream instead of producing noise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._compat import EntropyBottleneck, GaussianConditional
from .errors import InputError, ModelMismatchError
from .models import ModelConfig, VideoModel

__all__ = ["DEFAULT_MODEL", "available_models", "load_model", "save_model", "weight_hash"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "nc-starter"


@dataclass(frozen=True)
class _Entry:
    weights: str
    description: str


_REGISTRY: dict[str, _Entry] = {}


def _register(name: str, weights: str, description: str) -> None:
    _REGISTRY[name] = _Entry(weights, description)


_register(
    "nc-starter",
    "nc-starter.safetensors",
    "3.9M-parameter starter model (block motion vectors from an encoder search) trained briefly "
    "on CPU and leased GPUs; see weights/nc-starter.md",
)
_register(
    "nc-small",
    "nc-small.safetensors",
    "1.6M-parameter faster variant (half the channels) trained briefly on CPU; see weights/nc-small.md",
)


def available_models() -> dict[str, str]:
    """Registered model names and their one-line descriptions."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def weight_hash(model: torch.nn.Module) -> str:
    """Hex digest over every shipped tensor (name, dtype, shape, bytes) in name order.

    The Gaussian tables are left out: they are the same for every model, come
    from :mod:`neurocodec.tables`, and their float ``scale_table`` copy is
    recomputed with the platform's ``exp``, which must not change a hash.
    """
    h = hashlib.sha256()
    derived = _derived_keys(model)
    for name, tensor in sorted(model.state_dict().items()):
        if name in derived:
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_model(model: VideoModel, path: Path, name: str, **metadata: str) -> str:
    """Write ``model`` as safetensors (entropy tables must be up to date); returns its hash.

    Convolution kernels are stored in float16 (half the size, within the
    15 MiB a file we allow) and rounded in ``model`` too, so the saved and
    the in-memory model have the same hash. Everything else stays float32
    or integer: GDN and entropy-model parameters are small and sensitive.
    """
    state = {}
    derived = _derived_keys(model)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key in derived:
                continue
            if value.is_floating_point() and value.ndim == 4 and key.endswith(".weight"):
                value.copy_(value.half().float())
                value = value.half()
            state[key] = value.detach().cpu().contiguous()
    meta = {"name": name, "config": model.config.to_json(), **metadata}
    save_file(state, str(path), metadata=meta)
    return weight_hash(model)


def torch_device(device: str | torch.device) -> torch.device:
    """A usable torch device, or an InputError that says why not."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"invalid device {device!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested, but this torch has no usable CUDA device")
    return device


def load_model(name_or_path: str | Path = DEFAULT_MODEL, *, device: str | torch.device = "cpu") -> VideoModel:
    """A registered model by name, or a ``.safetensors`` file, ready to code (eval mode).

    The returned model has ``name`` and ``weight_hash`` attributes, which
    the encoder writes into the stream header, and ``history``: the training
    runs that made the weights (read by fine-tuning runs for the model card).
    """
    if str(name_or_path) in _REGISTRY:
        path = WEIGHTS_DIR / _REGISTRY[str(name_or_path)].weights
    else:
        path = Path(name_or_path)
        if path.suffix != ".safetensors":
            raise ModelMismatchError(
                f"unknown model {str(name_or_path)!r}; registered models: {', '.join(_REGISTRY)}"
            )
    if not path.is_file():
        raise ModelMismatchError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
        with open(path, "rb") as f:  # safetensors keeps metadata in its JSON header
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n)).get("__metadata__", {})
        config = ModelConfig.from_json(meta["config"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise ModelMismatchError(f"cannot read weights {path}: {e}") from e
    model = VideoModel(config)
    _resize_entropy_tables(model, state)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ModelMismatchError(f"weights {path} do not fit their config: {e}") from e
    if result.unexpected_keys or set(result.missing_keys) - _derived_keys(model):
        raise ModelMismatchError(
            f"weights {path} do not fit their config: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    model.name = meta.get("name", path.stem)
    model.history = json.loads(meta.get("training", "[]"))  # the runs that made it (export's record)
    model.weight_hash = weight_hash(model)
    return model.to(torch_device(device)).eval()


def _derived_keys(model: torch.nn.Module) -> set[str]:
    """The Gaussian model's table buffers: never shipped, since coding reads :mod:`neurocodec.tables`."""
    return {
        f"{prefix}.{buf}"
        for prefix, module in model.named_modules() if isinstance(module, GaussianConditional)
        for buf in module._buffers
    }


#: Entropy-model buffers computed from the weights (tables), not trained.
TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def _resize_entropy_tables(model: VideoModel, state: dict[str, torch.Tensor]) -> None:
    """The factorized model's tables depend on training; size its buffers to the file's."""
    for prefix, module in model.named_modules():
        if isinstance(module, EntropyBottleneck):
            for buf in TABLE_BUFFERS:
                if f"{prefix}.{buf}" in state:
                    module._buffers[buf] = torch.empty_like(state[f"{prefix}.{buf}"])


def model_identity(model: VideoModel) -> tuple[str, str]:
    """(name, weight hash) of a model loaded by :func:`load_model` or built in memory."""
    if not isinstance(model, VideoModel):
        raise InputError(f"expected a neurocodec VideoModel, got {type(model).__name__}")
    if getattr(model, "weight_hash", None) is None:
        prepare(model)
        model.weight_hash = weight_hash(model)
    return getattr(model, "name", "custom"), model.weight_hash


def prepare(model: VideoModel) -> None:
    """Build entropy tables for an in-memory model that has none yet (tests, fresh training)."""
    if model.intra.prior.z_model._offset.numel() == 0:
        model.update()
