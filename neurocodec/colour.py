"""BT.709 colour conversion: the one matrix neurocodec uses everywhere.

Why one module: every lossy step (codec input, metrics, file I/O) must agree on
the RGB <-> Y'CbCr matrix. Decoding a BT.709 stream with the BT.601 matrix (or
the other way round) shifts hues and silently costs more than 1 dB of PSNR, so
nothing else in neurocodec should hard-code colour coefficients.

Conventions (8-bit "limited" / "studio" / "MPEG" range, as 8-bit video uses):

* RGB is uint8 ``[H, W, 3]`` in full range 0..255 (gamma-encoded, no
  linearisation: the matrix acts on R'G'B').
* Y is 16..235, U (Cb) and V (Cr) are 16..240, neutral chroma is 128.
* 4:2:0 chroma planes are ``[ceil(H/2), ceil(W/2)]``; each chroma sample is the
  mean of a 2x2 luma-sized block (centre siting), with the last row/column
  edge-replicated when H or W is odd.

All arithmetic is float32; results are rounded half-to-even (``np.rint``) and
clipped when cast back to uint8.
"""

from __future__ import annotations

import numpy as np

from neurocodec.errors import InputError

__all__ = ["KB", "KG", "KR", "chroma_shape", "rgb_to_yuv", "rgb_to_yuv420", "yuv420_to_rgb", "yuv_to_rgb"]

# BT.709 luma coefficients (ITU-R BT.709-6, item 3.2).
KR = 0.2126
KB = 0.0722
KG = 1.0 - KR - KB  # 0.7152

_Y_SCALE = 219.0 / 255.0  # full-range R'G'B' 0..255 -> luma excursion 16..235
_C_SCALE = 224.0 / 255.0  # -> chroma excursion 16..240

_F = np.float32


def chroma_shape(height: int, width: int) -> tuple[int, int]:
    """Shape of a 4:2:0 chroma plane for a ``height x width`` picture (ceil halves)."""
    return (height + 1) // 2, (width + 1) // 2


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise InputError(f"expected a uint8 numpy array, got {type(rgb).__name__} "
                         f"{getattr(rgb, 'dtype', '')}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputError(f"expected an RGB image of shape [H, W, 3], got {rgb.shape}")
    return rgb


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rgb_to_yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-resolution BT.709 limited-range planes from uint8 RGB ``[H, W, 3]``.

    Returns float32 ``(y, u, v)``, each ``[H, W]``, unrounded: Y in 16..235, U/V in
    16..240. White -> (235, 128, 128); black -> (16, 128, 128); pure red ->
    (62.56, 102.34, 240).
    """
    rgb = _check_rgb(rgb)
    r, g, b = (rgb[..., i].astype(_F) for i in range(3))
    luma = _F(KR) * r + _F(KG) * g + _F(KB) * b  # 0..255
    y = _F(16.0) + _F(_Y_SCALE) * luma
    u = _F(128.0) + _F(_C_SCALE / (2.0 * (1.0 - KB))) * (b - luma)
    v = _F(128.0) + _F(_C_SCALE / (2.0 * (1.0 - KR))) * (r - luma)
    return y, u, v


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_yuv` for full-resolution planes (any numeric dtype).

    ``y``, ``u``, ``v`` must share a 2-D shape ``[H, W]``; returns uint8 ``[H, W, 3]``
    (out-of-gamut values are clipped to 0..255).
    """
    y, u, v = (np.asarray(p, dtype=_F) for p in (y, u, v))
    if y.ndim != 2 or u.shape != y.shape or v.shape != y.shape:
        raise InputError(f"planes must share one 2-D shape, got {y.shape}, {u.shape}, {v.shape}")
    luma = (y - _F(16.0)) / _F(_Y_SCALE)
    cb = (u - _F(128.0)) / _F(_C_SCALE)
    cr = (v - _F(128.0)) / _F(_C_SCALE)
    r = luma + _F(2.0 * (1.0 - KR)) * cr
    b = luma + _F(2.0 * (1.0 - KB)) * cb
    g = (luma - _F(KR) * r - _F(KB) * b) / _F(KG)
    return _to_u8(np.stack([r, g, b], axis=-1))


def _downsample2x2(plane: np.ndarray) -> np.ndarray:
    """Mean over 2x2 blocks, edge-replicating the last row/column of odd sizes."""
    h, w = plane.shape
    if h % 2 or w % 2:
        plane = np.pad(plane, ((0, h % 2), (0, w % 2)), mode="edge")
    return (plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]) * _F(0.25)


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.709 limited-range 4:2:0 planes from uint8 RGB ``[H, W, 3]``.

    Returns uint8 ``y [H, W]``, ``u [ceil(H/2), ceil(W/2)]``, ``v`` (same as u).
    Chroma is averaged in float before rounding, so there is one rounding step.
    """
    y, u, v = rgb_to_yuv(rgb)
    return _to_u8(y), _to_u8(_downsample2x2(u)), _to_u8(_downsample2x2(v))


def _upsample_axis(plane: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Bilinear x2 upsampling along ``axis`` for centre-sited chroma, clamped at edges.

    Output sample ``i`` sits at chroma coordinate ``(i - 0.5) / 2`` (the centre of
    the 2x2 block a chroma sample was averaged from is at ``2j + 0.5``).
    """
    n = plane.shape[axis]
    pos = (np.arange(size, dtype=_F) - _F(0.5)) * _F(0.5)
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo).astype(_F)
    i0 = np.clip(lo, 0, n - 1)
    i1 = np.clip(lo + 1, 0, n - 1)
    shape = [1, 1]
    shape[axis] = size
    frac = frac.reshape(shape)
    a = np.take(plane, i0, axis=axis)
    b = np.take(plane, i1, axis=axis)
    return a + (b - a) * frac


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, *,
                  upsample: str = "bilinear") -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` from BT.709 limited-range 4:2:0 planes.

    ``y`` is ``[H, W]``; ``u`` and ``v`` are ``[ceil(H/2), ceil(W/2)]`` (any numeric
    dtype, e.g. uint8 or float decoder output). ``upsample`` is ``"bilinear"``
    (centre-sited, matches :func:`rgb_to_yuv420`'s averaging; default) or
    ``"nearest"`` (each chroma sample covers its 2x2 block).
    """
    y = np.asarray(y, dtype=_F)
    u = np.asarray(u, dtype=_F)
    v = np.asarray(v, dtype=_F)
    if y.ndim != 2 or y.size == 0:
        raise InputError(f"luma plane must be a non-empty 2-D array, got {y.shape}")
    h, w = y.shape
    cs = chroma_shape(h, w)
    if u.shape != cs or v.shape != cs:
        raise InputError(f"chroma planes must be {cs} for luma {y.shape}, got {u.shape}, {v.shape}")
    if upsample == "nearest":
        uu = np.repeat(np.repeat(u, 2, axis=0), 2, axis=1)[:h, :w]
        vv = np.repeat(np.repeat(v, 2, axis=0), 2, axis=1)[:h, :w]
    elif upsample == "bilinear":
        uu = _upsample_axis(_upsample_axis(u, h, 0), w, 1)
        vv = _upsample_axis(_upsample_axis(v, h, 0), w, 1)
    else:
        raise InputError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
    return yuv_to_rgb(y, uu, vv)
