"""Building blocks shared by the intra, motion and inter coders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._compat import GDN

#: Every transform downsamples 4 times by 2 and the hyperprior twice more.
STRIDE = 64


def conv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=k // 2, output_padding=s - 1)


def analysis(cin: int, n: int, m: int) -> nn.Sequential:
    """Image -> latent at 1/16 resolution (four stride-2 convs with GDN)."""
    return nn.Sequential(
        conv(cin, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m)
    )


class InverseGDN(GDN):
    """Inverse GDN, computed in float32 whatever the autocast precision.

    It multiplies each feature by ``sqrt(beta + gamma * x^2)``, a function of
    the features themselves; in a synthesis transform its bfloat16 rounding
    lands in the decoded frame, hence in every later reference. It was most
    of what remained of the bfloat16 decoder's drift: over a 93-frame GOP of
    a held-out clip, with it in float32 the bfloat16 decode stays within
    52 dB of the float32 one and 0.03 dB below it against the source, where
    it fell to 42 dB and 0.44 dB below (docs/determinism.md). The
    transposed convolutions around it matter far less. The cost is a 1x1
    convolution and a few element-wise passes in float32, at up to half the
    frame's resolution.
    """

    def __init__(self, channels: int):
        super().__init__(channels, inverse=True)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def synthesis(m: int, n: int, cout: int) -> nn.Sequential:
    """Latent at 1/16 resolution -> full-resolution output (inverse GDN)."""
    return nn.Sequential(
        deconv(m, n), InverseGDN(n), deconv(n, n), InverseGDN(n),
        deconv(n, n), InverseGDN(n), deconv(n, cout),
    )


def sampling_grid(flow: Tensor) -> Tensor:
    """``grid_sample`` coordinates [B, H, W, 2] for pixel displacements ``flow`` [B, >=2, H, W] (dx, dy).

    ``align_corners=True`` convention: a zero flow samples every pixel at itself.
    """
    h, w = flow.shape[-2:]
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    sx, sy = grid_scale(h, w)
    return torch.stack([(xs + flow[:, 0]) * sx - 1.0, (ys + flow[:, 1]) * sy - 1.0], dim=-1)


def grid_scale(h: int, w: int) -> tuple[float, float]:
    """How far one pixel moves a :func:`sampling_grid` coordinate, (x, y)."""
    return 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)


def bilinear_warp(img: Tensor, flow: Tensor) -> Tensor:
    """Bilinear sample of ``img`` [B, C, H, W] at pixel displacements ``flow`` [B, >=2, H, W], edges replicated."""
    return F.grid_sample(img, sampling_grid(flow), mode="bilinear", padding_mode="border", align_corners=True)


def cat_channels(tensors: list[Tensor], conv: nn.Conv2d) -> Tensor:
    """Concatenate along channels, ready for ``conv``: in the dtype it computes
    in and its memory format.

    The convolution would cast and re-lay its input anyway, so this gives the
    same values; but concatenating a bfloat16 channels-last feature map with a
    float32 image makes a float32 tensor in the wrong layout, and converting
    that at full resolution was the costliest step of a CPU P-frame decode.
    """
    w = conv.weight
    device = w.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else w.dtype
    last = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    fmt = torch.channels_last if last else torch.contiguous_format
    ready = [t.to(dtype=dtype, memory_format=fmt) for t in tensors]
    return ready[0] if len(ready) == 1 else torch.cat(ready, dim=1)


def in_float32(layers: nn.Module, tensors: list[Tensor]) -> Tensor:
    """``layers`` (a convolution, or a sequence starting with one) on the channel
    concatenation of ``tensors``, in float32 whatever the autocast precision.

    For the layers whose output becomes a reference frame (the I-frame
    synthesis' last layer, the P-frame fusion): in half precision their
    rounding would re-enter every later frame and compound along the GOP.
    Decoding a float32 stream in bfloat16 without them, the last of 93 frames
    of a held-out clip fell to 24.8 dB against the float32 decode; with them it
    stays at 43-45 dB (docs/results/drift-fuse/).
    """
    first = layers[0] if isinstance(layers, nn.Sequential) else layers
    with torch.autocast(first.weight.device.type, enabled=False):
        return layers(cat_channels(tensors, first))


def padded_size(height: int, width: int, stride: int = STRIDE) -> tuple[int, int]:
    """The (height, width) a frame is coded at: rounded up to multiples of ``stride``."""
    return height + -height % stride, width + -width % stride


def pad_to_stride(x: Tensor, stride: int = STRIDE) -> Tensor:
    """Replicate-pad [B, C, H, W] on the bottom/right to multiples of ``stride``."""
    h, w = x.shape[-2:]
    hp, wp = padded_size(h, w, stride)
    ph, pw = hp - h, wp - w
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def to_reference(x_hat: Tensor) -> Tensor:
    """Clamp to [0, 1] and snap to the 8-bit grid.

    The decoder outputs 8-bit frames, so the next P-frame must reference
    exactly those values; snapping also stops float noise from carrying over
    from one frame to the next.
    """
    return torch.round(x_hat.clamp(0.0, 1.0) * 255.0) / 255.0


class QualityGain(nn.Module):
    """Per-channel gain as a continuous function of quality ``q`` in [0, 1].

    Learned log-gains at ``anchors`` evenly spaced qualities, interpolated
    linearly (a gained VAE: one model, a continuum of rates). The latent is
    multiplied by the gain before rounding, so a larger gain means finer
    quantization and more bits.
    """

    def __init__(self, channels: int, anchors: int = 8, low: float = 0.35, high: float = 2.5):
        super().__init__()
        init = torch.linspace(torch.tensor(low).log().item(), torch.tensor(high).log().item(), anchors)
        self.log_gain = nn.Parameter(init[:, None].repeat(1, channels))

    def forward(self, q: Tensor) -> Tensor:
        """``q`` [B] -> gains [B, C, 1, 1]."""
        k = self.log_gain.shape[0] - 1
        pos = q.clamp(0.0, 1.0) * k
        lo = pos.floor().clamp(max=k - 1).long()
        frac = (pos - lo).unsqueeze(1)
        log_gain = self.log_gain[lo] * (1 - frac) + self.log_gain[lo + 1] * frac
        return log_gain.exp()[:, :, None, None]


class GainPair(nn.Module):
    """Gain before quantization and a separately learned inverse gain after."""

    def __init__(self, channels: int):
        super().__init__()
        self.gain = QualityGain(channels)
        self.inverse = QualityGain(channels, low=1 / 0.35, high=1 / 2.5)
