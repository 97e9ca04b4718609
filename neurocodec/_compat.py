"""Import CompressAI without torchvision.

CompressAI 1.2.8 imports ``torchvision.transforms`` at package import time (for
its dataset/transform registries, which neurocodec never uses). PyPI's
torchvision wheels pull a CUDA build of torch and fail to import beside the CPU
build we pin, so when torchvision is absent we register an empty stand-in
module before importing CompressAI. Its entropy models and rANS coder, the only
parts we use, do not touch torchvision. Import CompressAI only through here.
"""

from __future__ import annotations

import importlib.util
import sys
import types

if importlib.util.find_spec("torchvision") is None:  # pragma: no branch
    _tv = types.ModuleType("torchvision")
    _tv.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
    sys.modules.setdefault("torchvision", _tv)
    sys.modules.setdefault("torchvision.transforms", _tv.transforms)  # type: ignore[attr-defined]

from compressai.ans import RansDecoder, RansEncoder  # noqa: E402
from compressai.entropy_models import EntropyBottleneck, GaussianConditional  # noqa: E402
from compressai.layers import GDN  # noqa: E402

__all__ = ["EntropyBottleneck", "GaussianConditional", "GDN", "RansEncoder", "RansDecoder"]
