"""Hyperprior entropy model and real entropy coding to bytes.

A latent ``y`` is modelled as a Gaussian whose mean and scale come from a
hyper-latent ``z`` (Minnen et al. 2018, the mean-scale hyperprior). ``z`` has
a learned factorized density (CompressAI's ``EntropyBottleneck``). Both are
coded with CompressAI's rANS coder.

Training and coding are separate paths on the same parameters:

- ``forward`` returns a straight-through rounded ``y_hat`` for the decoder and
  noise-relaxed likelihoods for the rate term;
- ``compress`` / ``decompress`` produce and consume bytes, and compute
  ``y_hat`` through one shared function so the encoder's reconstruction equals
  the decoder's bit for bit on the same device.

Determinism across devices. The decoder can parse a latent element only with
the same probability table the encoder used; a table index computed in
floating point on another device (GPU, half precision, another CPU) may round
the other way and turn the rest of the stream into noise. So the *scale*
path, the one that selects tables, depends on the decoded hyper-latent alone
(never on the float temporal context of a P-frame) and is evaluated in exact
integer arithmetic: weights and activations in fixed point, convolutions on
integer-valued float64 tensors whose every partial sum is an integer below
2^53, so no summation order, kernel or device can change the result
(:class:`ExactStack`). The means only shift the decoded values, never the
parse, so they stay in floating point and may take the temporal context.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._compat import EntropyBottleneck, GaussianConditional, RansDecoder, RansEncoder
from .errors import BitstreamError
from .profiling import stage
from .tables import SCALE_FRACTION_BITS, SCALE_TABLE, coding_tables

__all__ = ["SCALE_TABLE", "Coded", "ExactStack", "Hyperprior", "Parsed", "Pending", "Relaxed", "decode_symbols",
           "encode_symbols", "scale_index", "ste_round"]

#: Fraction bits of the exact path's fixed-point weights (activations carry
#: SCALE_FRACTION_BITS).
WEIGHT_FRACTION_BITS = 16
#: Activations are clamped to this magnitude (never reached by trained weights);
#: with it every layer's partial sums are provably below 2^53 (checked per layer).
_ACTIVATION_LIMIT = 2.0**14
_EXACT_LIMIT = 2.0**53


def scale_index(scales: Tensor) -> Tensor:
    """Table index for integer scales (``SCALE_FRACTION_BITS`` fraction bits).

    The smallest table scale >= the predicted one: rounding up keeps the chosen
    Gaussian at least as wide as predicted (a narrower one costs more bits).
    Integer comparisons against the shipped bounds, so exact everywhere.
    """
    bounds = coding_tables().bounds.to(scales.device, torch.float64)
    return torch.searchsorted(bounds, scales.contiguous()).clamp_(max=len(SCALE_TABLE) - 1).int()


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _host_indexes(indexes: Tensor) -> np.ndarray:
    """Table indexes as the rANS coder's side takes them: on the host, uint8 (64 tables),
    a quarter of the bytes of int32 when sent to a worker process."""
    return indexes.to(torch.uint8).cpu().numpy()


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


class ExactStack:
    """Integer-exact evaluation of a stack of convolutions and leaky ReLUs.

    Weights are rounded to ``WEIGHT_FRACTION_BITS`` fraction bits, biases to
    those plus ``SCALE_FRACTION_BITS``; activations are integers with
    ``SCALE_FRACTION_BITS`` fraction bits. Each layer accumulates products of
    integers into float64, checked at build time never to exceed 2^53, so
    every partial sum is exact whatever the summation order, then rescales by
    a power of two and floors (exact). The leaky ReLU is one IEEE multiply and
    a floor: correctly rounded on every device. cuDNN is bypassed because
    some of its algorithms (FFT, Winograd) transform the operands.
    """

    def __init__(self, layers: list[nn.Module]):
        self.ops: list[tuple] = []
        limit = _ACTIVATION_LIMIT * 2**SCALE_FRACTION_BITS
        for layer in layers:
            if isinstance(layer, nn.LeakyReLU):
                self.ops.append(("relu", layer.negative_slope))
                continue
            if not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                raise TypeError(f"no exact form for {type(layer).__name__}")
            w = torch.round(layer.weight.detach().double() * 2**WEIGHT_FRACTION_BITS)
            b = torch.round(layer.bias.detach().double() * 2 ** (WEIGHT_FRACTION_BITS + SCALE_FRACTION_BITS))
            out_dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
            worst = w.abs().transpose(0, out_dim).flatten(1).sum(1) * limit + b.abs()
            if worst.max() >= _EXACT_LIMIT:
                raise ValueError("weights too large for the exact entropy-parameter path")
            kind = "deconv" if out_dim else "conv"
            extra = {"output_padding": layer.output_padding} if out_dim else {}
            self.ops.append((kind, w, b, dict(stride=layer.stride, padding=layer.padding, **extra)))

    def to(self, device: torch.device) -> ExactStack:
        self.ops = [(op[0], op[1].to(device), op[2].to(device), op[3]) if op[0] != "relu" else op
                    for op in self.ops]
        return self

    def __call__(self, x: Tensor) -> Tensor:
        """``x``: integer-valued float64 (fixed point); returns the same."""
        limit = _ACTIVATION_LIMIT * 2**SCALE_FRACTION_BITS
        x = x.clamp(-limit, limit)  # a crafted stream's huge symbols must not break the 2^53 bound
        with torch.autocast(x.device.type, enabled=False), torch.backends.cudnn.flags(enabled=False):
            for op in self.ops:
                if op[0] == "relu":
                    x = torch.where(x >= 0, x, torch.floor(x * op[1]))
                    continue
                conv = F.conv_transpose2d if op[0] == "deconv" else F.conv2d
                x = conv(x, op[1], op[2], **op[3])
                x = torch.floor(x * 2.0**-WEIGHT_FRACTION_BITS).clamp_(-limit, limit)
        return x


class Relaxed(NamedTuple):
    """The training path's view of a coded latent."""

    y_hat: Tensor  #: what the decoder reconstructs from (straight-through rounded)
    likelihoods: dict[str, Tensor]  #: noise-relaxed, for the rate term
    symbols: Tensor  #: ``y_hat`` minus its means: what the stream carries
    hyper: Tensor  #: decoded hyper features, input of the mean head


class Parsed(NamedTuple):
    """A coded latent's integers, entropy-decoded: all a decoder reads from its streams."""

    z_hat: Tensor  #: decoded hyper-latent [1, C, h/4, w/4] (integer symbols plus the medians)
    symbols: Tensor  #: int32 [1, M, h, w]: ``y_hat`` minus its means
    hyper: Tensor  #: exact hyper features (fixed point), input of the mean head


class Pending(NamedTuple):
    """A latent half parsed: its hyper-latent decoded and every element's table
    chosen; its symbols still coded (:func:`decode_symbols` may run elsewhere)."""

    z_hat: Tensor
    hyper: Tensor
    indexes: np.ndarray  #: uint8 [1, M, h, w]: the table of each element
    y_bytes: bytes

    def complete(self, symbols: np.ndarray | None = None) -> Parsed:
        """The parse, given the symbols decoded elsewhere, or decoding them here."""
        if symbols is None:
            symbols = decode_symbols(self.y_bytes, self.indexes)
        return Parsed(self.z_hat, torch.from_numpy(symbols).reshape(self.indexes.shape), self.hyper)


def decode_symbols(y_bytes: bytes, indexes: np.ndarray) -> np.ndarray:
    """rANS-decode a latent's symbols (flat int32) given each element's table index.

    The serial core of decoding. Needs only the shipped tables, no model and
    no device, so it can run in any process (:mod:`neurocodec.parallel`).
    """
    t = coding_tables()
    with stage("entropy"):
        values = RansDecoder().decode_with_indexes(
            _guard(y_bytes, indexes.size), indexes.ravel().tolist(), t.rows, t.lengths_list, t.offsets_list
        )
        return np.fromiter(values, dtype=np.int32, count=indexes.size)


def encode_symbols(symbols: np.ndarray, indexes: np.ndarray) -> bytes:
    """rANS-encode a latent's symbols (int32) given each element's table index.

    The serial core of encoding; like :func:`decode_symbols` it needs only
    the shipped tables and runs in any process.
    """
    t = coding_tables()
    with stage("entropy"):
        return RansEncoder().encode_with_indexes(
            symbols.ravel().tolist(), indexes.ravel().tolist(), t.rows, t.lengths_list, t.offsets_list
        )


class Coded(NamedTuple):
    """A latent ready for its last coding step: hyper-latent coded, tables chosen,
    symbols still to rANS-encode (:func:`encode_symbols` may run elsewhere)."""

    z_bytes: bytes
    symbols: np.ndarray  #: int32 [1, M, h, w]
    indexes: np.ndarray  #: uint8 [1, M, h, w]: the table of each element

    def streams(self, y_bytes: bytes | None = None) -> list[bytes]:
        """``[y_bytes, z_bytes]``, given the y stream coded elsewhere, or coding it here."""
        return [encode_symbols(self.symbols, self.indexes) if y_bytes is None else y_bytes, self.z_bytes]


class Hyperprior(nn.Module):
    """Mean-scale hyperprior over a latent ``y`` [B, M, h, w] (h, w multiples of 4).

    ``h_s`` decodes the hyper-latent into features shared by two heads: the
    scale head (exact at coding time, see the module notes) and the mean head,
    which also sees ``ctx`` (optional, [B, ctx_channels, h, w]): a P-frame
    passes features of its motion-compensated prediction there, so the means
    start from what the past already explains.
    """

    def __init__(self, latent_channels: int, hyper_channels: int, ctx_channels: int = 0, zero_mean: bool = False):
        super().__init__()
        m, n = latent_channels, hyper_channels
        self.m = m
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
        self.scale_head = nn.Sequential(_conv(2 * m, 2 * m, 1), nn.LeakyReLU(inplace=True), _conv(2 * m, m, 1))
        #: None for a zero-mean latent (``zero_mean``): its decoded values are then exactly its
        #: integer symbols, for latents that must come back exact (summed motion-vector differences)
        self.mean_head = None if zero_mean else nn.Sequential(
            _conv(2 * m + ctx_channels, 2 * m, 1), nn.LeakyReLU(inplace=True), _conv(2 * m, m, 1)
        )
        self.z_model = EntropyBottleneck(n)
        self.y_model = GaussianConditional(SCALE_TABLE)
        #: (device, trunk, scale head), derived from the weights when first coding
        self._exact: tuple[torch.device, ExactStack, ExactStack] | None = None

    def _medians(self) -> Tensor:
        return self.z_model._get_medians().detach().reshape(1, -1, 1, 1)

    def means(self, h: Tensor, ctx: Tensor | None) -> Tensor:
        """Means of ``y`` from hyper features ``h`` and the optional context."""
        if self.mean_head is None:
            return h.new_zeros(h.shape[0], self.m, *h.shape[2:])
        return self.mean_head(h if ctx is None else torch.cat([h, ctx.to(h.dtype)], dim=1))

    def forward(self, y: Tensor, ctx: Tensor | None = None) -> Relaxed:
        """Training path (likelihoods keyed ``"y"`` and ``"z"``)."""
        self._exact = None  # the weights are (about to be) changing
        z = self.h_a(y)
        with torch.autocast(y.device.type, enabled=False):  # rates need float32 under --amp
            _, z_lik = self.z_model(z.float())
        medians = self._medians()
        z_hat = ste_round(z - medians) + medians
        h = self.h_s(z_hat)
        means, scales = self.means(h, ctx).float(), self.scale_head(h).float()
        y = y.float()
        with torch.autocast(y.device.type, enabled=False):
            _, y_lik = self.y_model(y, scales, means)
        symbols = ste_round(y - means)
        return Relaxed(symbols + means, {"y": y_lik, "z": z_lik}, symbols, h)

    def coding_rate(self, y: Tensor, ctx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Differentiable cost of coding ``y``: (the ``y_hat`` a decoder gets, bits of ``y`` and ``z``).

        Unlike :meth:`forward`'s noise relaxation, this rounds as the coder
        does (straight-through), so it prices the very integers the stream
        will carry; it differs from the real size only by the coder's tables
        (scales rounded up to the table grid) and the rANS overhead. For an
        encoder that optimises its latent (:mod:`neurocodec.refine`).
        """
        z = self.h_a(y).float()
        medians = self._medians()
        z_hat = ste_round(z - medians) + medians
        z_lik, *_ = self.z_model._likelihood(z_hat.transpose(0, 1).flatten(1).unsqueeze(1))
        h = self.h_s(z_hat)
        means, scales = self.means(h, ctx).float(), self.scale_head(h).float()
        y_hat = ste_round(y.float() - means) + means
        y_lik = self.y_model._likelihood(y_hat, scales, means)
        z_bits = -torch.log2(self.z_model.likelihood_lower_bound(z_lik)).sum()
        return y_hat, z_bits - torch.log2(self.y_model.likelihood_lower_bound(y_lik)).sum()

    def entropy_parameters(self, z_hat: Tensor, ctx: Tensor | None) -> tuple[Tensor, Tensor]:
        """Coding path: (means float32, table indexes int32) for a decoded ``z_hat``.

        The indexes are exact functions of ``z_hat``'s integer symbols (the
        shipped medians are fixed), identical on every device and precision.
        """
        h, indexes = self._exact_hyper(z_hat)
        return self._coding_means(h, ctx), indexes

    def _exact_hyper(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(hyper features in fixed point, table indexes), both exact."""
        if self._exact is None or self._exact[0] != z_hat.device:
            self._exact = (z_hat.device, ExactStack(list(self.h_s)).to(z_hat.device),
                           ExactStack(list(self.scale_head)).to(z_hat.device))
        _, trunk, head = self._exact
        with stage("exact"):
            h = trunk(torch.round(z_hat.double() * 2**SCALE_FRACTION_BITS))
            return h, scale_index(head(h))

    def _coding_means(self, h: Tensor, ctx: Tensor | None) -> Tensor:
        dtype = torch.float32 if self.mean_head is None else self.mean_head[0].weight.dtype  # float32 unless converted
        with torch.autocast(h.device.type, enabled=False):  # no half-precision means: they set y_hat
            return self.means((h * 2.0**-SCALE_FRACTION_BITS).to(dtype), None if ctx is None else ctx.to(dtype))

    @torch.no_grad()
    def prepare(self, y: Tensor, ctx: Tensor | None = None) -> tuple[Coded, Tensor]:
        """Code ``y``'s hyper-latent and choose its tables; returns the decoder's ``y_hat``."""
        y = y.float()
        z = self.h_a(y).float()
        with stage("entropy"):
            z_bytes = self.z_model.compress(z)[0]
        medians = self._medians()
        z_hat = torch.round(z - medians) + medians
        means, indexes = self.entropy_parameters(z_hat, ctx)
        symbols = torch.round(y - means)
        coded = Coded(z_bytes, symbols.int().cpu().numpy(), _host_indexes(indexes))
        return coded, symbols + means

    def compress(self, y: Tensor, ctx: Tensor | None = None) -> tuple[list[bytes], Tensor]:
        """Code ``y`` (batch 1) to ``[y_bytes, z_bytes]``; returns the decoder's ``y_hat``."""
        coded, y_hat = self.prepare(y, ctx)
        return coded.streams(), y_hat

    @torch.no_grad()
    def parse_tables(self, streams: list[bytes], latent_hw: tuple[int, int]) -> Pending:
        """Decode ``z`` from ``[y_bytes, z_bytes]`` and choose every element's table.

        Needs no context: the table choice depends on ``z`` alone, so parsing
        may run before, or apart from, the reconstruction it feeds.
        """
        if len(streams) != 2:
            raise BitstreamError(f"a hyperprior latent needs 2 coded streams, got {len(streams)}")
        y_bytes, z_bytes = streams
        z_hw = (latent_hw[0] // 4, latent_hw[1] // 4)
        with stage("entropy"):
            z_hat = self.z_model.decompress([_guard(z_bytes, self.z_model.channels * z_hw[0] * z_hw[1])], z_hw)
        h, indexes = self._exact_hyper(z_hat)
        return Pending(z_hat, h, _host_indexes(indexes), y_bytes)

    @torch.no_grad()
    def reconstruct(self, parsed: Parsed, ctx: Tensor | None = None) -> Tensor:
        """The decoded latent ``y_hat`` of a parse."""
        means = self._coding_means(parsed.hyper, ctx)
        return parsed.symbols.to(means.device).float() + means

    def decompress(self, streams: list[bytes], latent_hw: tuple[int, int], ctx: Tensor | None = None) -> Tensor:
        """Inverse of :meth:`compress` for a latent of spatial size ``latent_hw``."""
        return self.reconstruct(self.parse_tables(streams, latent_hw).complete(), ctx)

    def update(self) -> None:
        """Rebuild the factorized model's tables from its learned density (before export).

        The quantiles that bound them are solved for from the density, rather
        than trusted from the slowly converging auxiliary loss: loose bounds
        cost escape codes. The Gaussian tables need no update: coding reads
        the shipped ones (:func:`~neurocodec.tables.coding_tables`), and the
        exact scale path is re-derived from the weights when next used.
        """
        self.z_model.update(force=True, update_quantiles=True)
        self._exact = None

    def aux_loss(self) -> Tensor:
        """Loss that fits the factorized model's quantiles (CompressAI's auxiliary loss)."""
        return self.z_model.loss()
