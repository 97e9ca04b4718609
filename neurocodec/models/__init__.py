"""The learned video model: an I-frame coder and a P-frame coder under one config."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from ..entropy import Hyperprior
from ..errors import InputError
from .inter import InterCoder
from .intra import IntraCoder
from .layers import STRIDE, pad_to_stride, padded_size, to_reference
from .motion import BlockMotionCoder, MotionCoder

__all__ = ["ModelConfig", "VideoModel", "STRIDE", "pad_to_stride", "padded_size", "to_reference"]

MOTION_CODERS = ("learned", "blocks")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and rate range of a :class:`VideoModel`; stored beside its weights."""

    n: int = 64  #: channels of the frame transforms
    m: int = 96  #: latent channels
    z: int = 64  #: hyper-latent channels
    motion_n: int = 48
    motion_m: int = 64
    motion_z: int = 32
    feat: int = 16  #: full-resolution feature channels fused with the prediction
    #: the motion encoder also sees a block-matching flow estimate (encoder only)
    motion_search: bool = False
    #: "learned": a motion autoencoder (:class:`~.motion.MotionCoder`); "blocks": the searched
    #: motion sent explicitly, a vector per 16x16 block (:class:`~.motion.BlockMotionCoder`;
    #: uses motion_z; always searches)
    motion_coder: str = "learned"
    #: rate-distortion weight at quality 0 and 1 (loss = lambda * 255^2 * MSE + bpp);
    #: quality interpolates log(lambda) linearly in between.
    lambda_min: float = 0.0018
    lambda_max: float = 0.0932

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)

    def __post_init__(self) -> None:
        if self.motion_coder not in MOTION_CODERS:
            raise InputError(f"unknown motion coder {self.motion_coder!r}; known: {MOTION_CODERS}")


class VideoModel(nn.Module):
    """I-frame and P-frame coders sharing one quality scale.

    Frames are float tensors [1, 3, H, W] in [0, 1] with H, W multiples of
    :data:`STRIDE`; the streaming codec pads and crops around this.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.intra = IntraCoder(c.n, c.m, c.z)
        motion = BlockMotionCoder(c.motion_z) if c.motion_coder == "blocks" else \
            MotionCoder(c.motion_n, c.motion_m, c.motion_z, search=c.motion_search)
        self.inter = InterCoder(c.n, c.m, c.z, motion, c.feat)

    def lmbda(self, q: Tensor) -> Tensor:
        """Rate-distortion weight for quality ``q`` (training)."""
        lo, hi = math.log(self.config.lambda_min), math.log(self.config.lambda_max)
        return torch.exp(lo + (hi - lo) * q)

    def update(self) -> None:
        """Rebuild every entropy table from the learned parameters."""
        for module in self.modules():
            if isinstance(module, Hyperprior):
                module.update()

    def aux_loss(self) -> Tensor:
        """Sum of the hyperpriors' quantile losses (trained with its own optimizer)."""
        return sum(m.aux_loss() for m in self.modules() if isinstance(m, Hyperprior))
