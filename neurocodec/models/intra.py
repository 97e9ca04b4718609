"""I-frame coder: a mean-scale hyperprior image codec with a quality gain."""

from __future__ import annotations

from torch import Tensor, nn

from ..entropy import Coded, Hyperprior, Parsed, Pending
from ..refine import Analysis, Refinement, code_latent
from .layers import GainPair, analysis, in_float32, synthesis


class IntraCoder(nn.Module):
    """Codes a frame [1, 3, H, W] in [0, 1] (H, W multiples of 64) on its own."""

    def __init__(self, n: int, m: int, z: int):
        super().__init__()
        self.g_a = analysis(3, n, m)
        self.g_s = synthesis(m, n, 3)
        self.prior = Hyperprior(m, z)
        self.gain = GainPair(m)

    def forward(self, x: Tensor, q: Tensor) -> dict:
        """Training path: reconstruction [B, 3, H, W] and likelihoods; ``q`` is [B]."""
        y = self.g_a(x) * self.gain.gain(q)
        y_hat, lik, *_ = self.prior(y)
        return {"x_hat": self._synthesize(y_hat, q), "likelihoods": lik}

    def compress(self, x: Tensor, q: Tensor, refine: Refinement | None = None) -> tuple[tuple[Coded], Tensor]:
        """The coded latent (its y stream still to rANS-encode) and the decoder's reconstruction."""
        coded, x_hat = code_latent(self.analyse(x, q), self.prior, x, refine)
        return (coded,), x_hat

    def analyse(self, x: Tensor, q: Tensor) -> Analysis:
        """The latent :meth:`compress` quantises, and the decoder's synthesis."""
        return Analysis(self.g_a(x) * self.gain.gain(q), None, lambda y_hat: self._synthesize(y_hat, q))

    def parse_tables(self, streams: list[bytes], hw: tuple[int, int]) -> tuple[Pending]:
        """The first half of entropy decoding (see :meth:`Hyperprior.parse_tables`)."""
        return (self.prior.parse_tables(streams, (hw[0] // 16, hw[1] // 16)),)

    def reconstruct(self, parsed: tuple[Parsed], q: Tensor) -> Tensor:
        return self._synthesize(self.prior.reconstruct(parsed[0]), q)

    def decompress(self, streams: list[bytes], hw: tuple[int, int], q: Tensor) -> Tensor:
        return self.reconstruct(tuple(p.complete() for p in self.parse_tables(streams, hw)), q)

    def _synthesize(self, y_hat: Tensor, q: Tensor) -> Tensor:
        h = self.g_s[:-1](y_hat * self.gain.inverse(q))
        return in_float32(self.g_s[-1], [h])  # it writes the GOP's first reference
