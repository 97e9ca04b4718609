"""Hyperprior entropy model and real entropy coding to bytes.

A latent ``y`` is modelled as a Gaussian whose mean and scale come from a
hyper-latent ``z`` (Minnen et al. 2018, the mean-scale hyperprior), optionally
fused with extra context features (the temporal prior of a P-frame). ``z`` has
a learned factorized density (CompressAI's ``EntropyBottleneck``). Both are
coded with CompressAI's rANS coder.

Training and coding are separate paths on the same parameters:

- ``forward`` returns a straight-through rounded ``y_hat`` for the decoder and
  noise-relaxed likelihoods for the rate term;
- ``compress`` / ``decompress`` produce and consume bytes, and compute
  ``y_hat`` through one shared function so the encoder's reconstruction equals
  the decoder's bit for bit on the same device.

The value that selects a probability table (the scale index) is computed in
one place, :func:`scale_indexes`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._compat import EntropyBottleneck, GaussianConditional
from .errors import BitstreamError

__all__ = ["SCALE_TABLE", "scale_indexes", "ste_round", "Hyperprior"]

#: Gaussian scales the coder has tables for (log-spaced, as in CompressAI).
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64
SCALE_TABLE: list[float] = [
    math.exp(v)
    for v in torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS).tolist()
]
_LOG_SCALE_MIN = math.log(SCALE_MIN)
_LOG_SCALE_STEP = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)


def scale_indexes(scales: Tensor) -> Tensor:
    """Index of the smallest table scale >= ``scales``: the choice of CDF.

    Rounding up keeps the chosen Gaussian at least as wide as predicted (a
    narrower one costs more bits than a slightly wider one). Computed in
    float64 on the CPU-independent log grid so that encoder and decoder agree.
    """
    pos = (scales.double().clamp_min(SCALE_MIN).log() - _LOG_SCALE_MIN) / _LOG_SCALE_STEP
    return pos.sub(1e-6).ceil().clamp(0, SCALE_LEVELS - 1).int()


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _guard(data: bytes, symbols: int) -> bytes:
    """Zero-pad a stream handed to the rANS decoder.

    CompressAI's decoder does no bounds checking: a corrupt or crafted stream
    makes it read past the end of its buffer. Past the real data it can read
    at most about one 32-bit word per remaining symbol, so this padding keeps
    every read inside memory we own, and zeros end its escape-code loops.
    """
    return data + bytes(4 * symbols + 64)


def _conv(cin: int, cout: int, k: int, s: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)


def _deconv(cin: int, cout: int, k: int, s: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=k // 2, output_padding=s - 1)


class Hyperprior(nn.Module):
    """Mean-scale hyperprior over a latent ``y`` [B, M, h, w] (h, w multiples of 4).

    ``ctx`` (optional, [B, ctx_channels, h, w]) is fused into the entropy
    parameters: a P-frame passes features of its motion-compensated
    prediction there, so the prior knows what the past already explains.
    """

    def __init__(self, latent_channels: int, hyper_channels: int, ctx_channels: int = 0):
        super().__init__()
        m, n = latent_channels, hyper_channels
        self.h_a = nn.Sequential(
            _conv(m, n, 3), nn.LeakyReLU(inplace=True),
            _conv(n, n, 5, 2), nn.LeakyReLU(inplace=True),
            _conv(n, n, 5, 2),
        )
        self.h_s = nn.Sequential(
            _deconv(n, n, 5, 2), nn.LeakyReLU(inplace=True),
            _deconv(n, m * 3 // 2, 5, 2), nn.LeakyReLU(inplace=True),
            _conv(m * 3 // 2, 2 * m, 3),
        )
        self.params = nn.Sequential(
            _conv(2 * m + ctx_channels, 2 * m, 1), nn.LeakyReLU(inplace=True),
            _conv(2 * m, 2 * m, 1),
        )
        self.z_model = EntropyBottleneck(n)
        self.y_model = GaussianConditional(SCALE_TABLE)

    def _medians(self) -> Tensor:
        return self.z_model._get_medians().detach().reshape(1, -1, 1, 1)

    def _gaussian(self, z_hat: Tensor, ctx: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.h_s(z_hat)
        if ctx is not None:
            h = torch.cat([h, ctx], dim=1)
        means, scales = self.params(h).chunk(2, dim=1)
        return means, scales

    def forward(self, y: Tensor, ctx: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Training path: ``(y_hat, {"y": likelihoods, "z": likelihoods})``."""
        z = self.h_a(y)
        with torch.autocast(y.device.type, enabled=False):  # rates need float32 under --amp
            _, z_lik = self.z_model(z.float())
        medians = self._medians()
        z_hat = ste_round(z - medians) + medians
        means, scales = self._gaussian(z_hat, ctx)
        y, means, scales = y.float(), means.float(), scales.float()
        with torch.autocast(y.device.type, enabled=False):
            _, y_lik = self.y_model(y, scales, means)
        y_hat = ste_round(y - means) + means
        return y_hat, {"y": y_lik, "z": z_lik}

    @torch.no_grad()
    def compress(self, y: Tensor, ctx: Tensor | None = None) -> tuple[list[bytes], Tensor]:
        """Code ``y`` (batch 1) to ``[y_bytes, z_bytes]``; returns the decoder's ``y_hat``."""
        z = self.h_a(y)
        z_bytes = self.z_model.compress(z)[0]
        medians = self._medians()
        z_hat = torch.round(z - medians) + medians
        means, scales = self._gaussian(z_hat, ctx)
        indexes = scale_indexes(scales)
        y_bytes = self.y_model.compress(y, indexes, means)[0]
        y_hat = torch.round(y - means) + means
        return [y_bytes, z_bytes], y_hat

    @torch.no_grad()
    def decompress(
        self, streams: list[bytes], latent_hw: tuple[int, int], ctx: Tensor | None = None
    ) -> Tensor:
        """Inverse of :meth:`compress` for a latent of spatial size ``latent_hw``."""
        if len(streams) != 2:
            raise BitstreamError(f"a hyperprior latent needs 2 coded streams, got {len(streams)}")
        y_bytes, z_bytes = streams
        z_hw = (latent_hw[0] // 4, latent_hw[1] // 4)
        z_hat = self.z_model.decompress([_guard(z_bytes, self.z_model.channels * z_hw[0] * z_hw[1])], z_hw)
        means, scales = self._gaussian(z_hat, ctx)
        indexes = scale_indexes(scales)
        return self.y_model.decompress([_guard(y_bytes, indexes.numel())], indexes, means=means)

    def update(self) -> None:
        """Rebuild the integer CDF tables from the learned parameters (before export).

        The quantiles that bound the factorized model's tables are solved for
        from its learned density, rather than trusted from the slowly
        converging auxiliary loss: loose bounds cost escape codes.
        """
        self.z_model.update(force=True, update_quantiles=True)
        self.y_model.update_scale_table(SCALE_TABLE, force=True)

    def aux_loss(self) -> Tensor:
        """Loss that fits the factorized model's quantiles (CompressAI's auxiliary loss)."""
        return self.z_model.loss()
