"""Quality and rate metrics on uint8 numpy frames.

Why numpy uint8 only: metrics are computed on what a viewer would see, i.e. the
8-bit frames that come out of a decoder or a video file, never on a model's
float tensors (which would flatter results by skipping the final rounding).
Callers holding float tensors in [0, 1] convert with
``(t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()`` first.

PSNR accumulates the squared error in float64 so small errors are exact.
YUV PSNR uses the BT.709 4:2:0 planes of :mod:`neurocodec.colour`, weighted
6:1:1 (Y:U:V) as in the learned-video-coding literature (e.g. DCVC).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

from neurocodec.colour import rgb_to_yuv420
from neurocodec.errors import InputError

__all__ = ["MS_SSIM_WEIGHTS", "bits_per_pixel", "ms_ssim", "psnr", "psnr_yuv420"]

# Wang et al. 2003 scale weights, finest scale first (same as pytorch_msssim).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN = 11  # Gaussian window size (sigma 1.5), the MS-SSIM standard


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
            raise InputError(f"{name} must be a uint8 numpy array, got "
                             f"{type(x).__name__} {getattr(x, 'dtype', '')}")
    if a.shape != b.shape:
        raise InputError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise InputError("cannot compare empty arrays")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB between two uint8 arrays of equal (any) shape; ``inf`` if identical.

    ``10 * log10(peak**2 / MSE)``; a constant error of 1 gives exactly
    ``20 * log10(255)`` ~= 48.13 dB.
    """
    _check_pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def psnr_yuv420(a_rgb: np.ndarray, b_rgb: np.ndarray) -> dict[str, float]:
    """Per-plane PSNR of the BT.709 4:2:0 versions of two RGB uint8 ``[H, W, 3]`` frames.

    Returns ``{"y", "u", "v", "yuv"}`` in dB with ``yuv = (6*y + u + v) / 8``
    (the weighted mean of the plane PSNRs, not of the MSEs).
    """
    _check_pair(a_rgb, b_rgb)
    pa, pb = rgb_to_yuv420(a_rgb), rgb_to_yuv420(b_rgb)
    y, u, v = (psnr(x, z) for x, z in zip(pa, pb, strict=True))
    return {"y": y, "u": u, "v": v, "yuv": (6.0 * y + u + v) / 8.0}


def _levels_for(short_side: int) -> int:
    """Most MS-SSIM scales (<= 5) whose coarsest level is still >= the 11-px window.

    Same rule as pytorch_msssim's assertion ``short_side > 10 * 2**(levels - 1)``.
    """
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and short_side > (_WIN - 1) * 2 ** levels:
        levels += 1
    return levels


@torch.no_grad()
def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """RGB MS-SSIM (data range 255) of two uint8 ``[H, W, 3]`` frames, in [0, 1].

    Frames with a short side > 160 px get the standard 5-scale MS-SSIM,
    numerically identical to ``pytorch_msssim.ms_ssim`` (whose internals are
    reused). Smaller frames get as many scales as fit (coarsest scale >= the
    11-px window), using the first weights renormalised to sum to 1; frames
    with a short side < 11 px fall back to single-scale SSIM with the largest
    odd window that fits. The mean over the 3 channels is returned.
    """
    _check_pair(a, b)
    if a.ndim != 3 or a.shape[2] != 3:
        raise InputError(f"expected RGB frames [H, W, 3], got {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(np.ascontiguousarray(b)).permute(2, 0, 1)[None].float()
    short = min(a.shape[:2])
    win_size = _WIN if short >= _WIN else short - (1 - short % 2)
    win = _fspecial_gauss_1d(win_size, 1.5).repeat([3, 1, 1, 1])
    levels = _levels_for(short) if short >= _WIN else 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=torch.float32)
    if levels < len(MS_SSIM_WEIGHTS):  # the standard 5 weights sum to 1.0001: keep as is
        weights = weights / weights.sum()
    mcs = []
    for i in range(levels):
        ssim_c, cs = _ssim(x, y, data_range=255.0, win=win, size_average=False)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2, padding=pad)
            y = torch.nn.functional.avg_pool2d(y, kernel_size=2, padding=pad)
    stack = torch.stack([*mcs, torch.relu(ssim_c)], dim=0)  # [levels, 1, 3]
    val = torch.prod(stack ** weights.view(-1, 1, 1), dim=0).mean()
    return float(val)


def bits_per_pixel(nbytes: int, width: int, height: int, frames: int) -> float:
    """Rate in bits per pixel: ``8 * nbytes / (width * height * frames)``."""
    if width < 1 or height < 1 or frames < 1:
        raise InputError(f"width, height and frames must be >= 1, got {width}, {height}, {frames}")
    if nbytes < 0:
        raise InputError(f"nbytes must be >= 0, got {nbytes}")
    return 8.0 * nbytes / (width * height * frames)
