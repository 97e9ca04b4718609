"""Moving test content without any download.

Why: tests, demos and smoke benchmarks need video with real (sub-pixel) motion
so that motion compensation has something to do, but must not depend on
fetched clips. Two sources:

* :func:`demo_clip`: the photograph matplotlib ships (Grace Hopper), filmed by
  a virtual camera that pans and slowly zooms, with a textured disc moving
  across it. Photographic statistics, global plus local motion.
* :func:`moving_pattern`: pure numpy, two periodic textures translating in
  different directions, one seen through soft-edged holes in the other.

Both return uint8 ``[T, H, W, 3]`` RGB and are deterministic for a given seed.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from neurocodec.errors import InputError

__all__ = ["demo_clip", "moving_pattern"]


def _check_dims(width: int, height: int, frames: int) -> None:
    for name, v, lo in (("width", width, 1), ("height", height, 1), ("frames", frames, 0)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")


@functools.lru_cache(maxsize=1)
def _photo() -> Image.Image:
    """The sample photograph bundled with matplotlib (no network access)."""
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    candidates = [sample / "grace_hopper.jpg", *sorted(sample.glob("*.png")), *sorted(sample.glob("*.jpg"))]
    for path in candidates:
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except OSError:
            continue
    raise InputError(f"no sample image found in {sample}")  # pragma: no cover - broken install


def _ease(x: float) -> float:
    """Smoothstep 0..1, so zoom starts and ends without a jolt."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def _disc(frame: np.ndarray, cx: float, cy: float, r: float, c1: np.ndarray, c2: np.ndarray,
          k: float) -> None:
    """Paint an anti-aliased textured disc centred at sub-pixel (cx, cy) in place (float frame)."""
    h, w = frame.shape[:2]
    x0, x1 = max(0, int(cx - r - 1)), min(w, int(cx + r + 2))
    y0, y1 = max(0, int(cy - r - 1)), min(h, int(cy + r + 2))
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u, v = xx + 0.5 - cx, yy + 0.5 - cy
    dist = np.sqrt(u * u + v * v)
    alpha = np.clip(r - dist + 0.5, 0.0, 1.0)[..., None]
    # analytic texture (checker-like waves plus rings): exact under sub-pixel motion
    p = 0.5 + 0.3 * np.sin(u * k) * np.cos(v * k) + 0.2 * np.cos(dist * k * 1.7)
    tex = c1 * (1.0 - p[..., None]) + c2 * p[..., None]
    frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1.0 - alpha) + tex * alpha


def demo_clip(width: int = 640, height: int = 360, frames: int = 32, *, seed: int = 0) -> np.ndarray:
    """Photographic clip with camera pan, slow zoom and a moving object: uint8 ``[T, H, W, 3]``.

    The camera window follows per-axis sinusoids through the part of the photo
    it can reach (peak speed about 2.5 output px/frame) and zooms in by 15 %
    over the clip; frames are resampled bicubically (sub-pixel). A textured
    disc of radius ~12 % of the short side crosses the frame at 2-4 px/frame,
    wrapping around. ``seed`` picks the path phases, disc colours and velocity.
    Any ``width, height >= 1``.
    """
    _check_dims(width, height, frames)
    rng = np.random.default_rng(seed)
    photo = _photo()
    iw, ih = photo.size
    s0 = 0.9 * min(iw / width, ih / height)  # source px per output px at the widest view
    margin = np.array([(iw - width * s0) / 2.0, (ih - height * s0) / 2.0])
    phase = rng.uniform(0.0, 2.0 * math.pi, size=2)
    period = np.maximum(8.0, 2.0 * math.pi * margin / (2.5 * s0))  # frames per oscillation
    r = max(1.5, 0.12 * min(width, height))
    c1, c2 = (rng.uniform(20, 235, size=3).astype(np.float32) for _ in range(2))
    k = float(rng.uniform(0.25, 0.5)) * 12.0 / max(r, 12.0)
    vel = rng.uniform(2.0, 4.0) * np.array([rng.choice([-1.0, 1.0]), rng.uniform(-0.3, 0.3)])
    start = np.array([rng.uniform(0, width), rng.uniform(0.3, 0.7) * height])
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        s = s0 * (1.0 - 0.15 * _ease(t / max(frames - 1, 1)))
        cx, cy = np.array([iw / 2.0, ih / 2.0]) + margin * np.sin(2 * math.pi * t / period + phase)
        # output (x, y) -> source (s*x + cx - s*W/2, s*y + cy - s*H/2)
        coeffs = (s, 0.0, cx - s * width / 2.0, 0.0, s, cy - s * height / 2.0)
        img = photo.transform((width, height), Image.Transform.AFFINE, coeffs,
                              resample=Image.Resampling.BICUBIC)
        frame = np.asarray(img, dtype=np.float32).copy()
        span = np.array([width + 2 * r, height + 2 * r])
        px, py = (start + vel * t + r) % span - r
        py += 0.05 * height * math.sin(t / 5.0)
        _disc(frame, px, py, r, c1, c2, k)
        out[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return out


def _lowpass(rng: np.random.Generator, shape: tuple[int, int], sigma: float, channels: int) -> np.ndarray:
    """Periodic Gaussian-filtered white noise, zero mean, unit std: float32 ``[h, w, channels]``."""
    h, w = shape
    noise = rng.standard_normal((channels, h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    gain = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fy * fy + fx * fx))
    out = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=(h, w))
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-8
    return np.moveaxis(out, 0, -1).astype(np.float32)


def _shifted(tex: np.ndarray, oy: float, ox: float, h: int, w: int) -> np.ndarray:
    """``[h, w]`` window of a periodic texture at sub-pixel offset (oy, ox), bilinear."""
    th, tw = tex.shape[:2]
    iy, ix = math.floor(oy), math.floor(ox)
    fy, fx = np.float32(oy - iy), np.float32(ox - ix)
    ys = (np.arange(h) + iy) % th
    xs = (np.arange(w) + ix) % tw
    y1, x1 = (ys + 1) % th, (xs + 1) % tw
    r0, r1 = tex[ys], tex[y1]
    top = r0[:, xs] * (1 - fx) + r0[:, x1] * fx
    bot = r1[:, xs] * (1 - fx) + r1[:, x1] * fx
    return top * (1 - fy) + bot * fy


def _velocity(rng: np.random.Generator, lo: float, hi: float, angle: float) -> tuple[float, float]:
    speed = rng.uniform(lo, hi)
    return speed * math.sin(angle), speed * math.cos(angle)


def moving_pattern(width: int, height: int, frames: int, *, seed: int = 0) -> np.ndarray:
    """Two translating textures, pure numpy: uint8 ``[T, H, W, 3]``, any ``width, height >= 1``.

    Background: smooth luminance noise at two scales (sigma 10 and 2.5 px), mild
    colour variation and hard-edged blobs, moving 1-3 px/frame. Foreground: a
    finer texture (sigma 1.5 px) moving 1.5-4 px/frame in a
    direction at least 60 degrees away, visible through soft-edged blobs
    covering about a third of the frame. Textures are periodic (at least 64 px),
    so any size and any number of frames work.
    """
    _check_dims(width, height, frames)
    rng = np.random.default_rng(seed)
    shape = (max(64, height), max(64, width))
    tint = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
    # background: luminance detail at two scales, gentle colour variation, hard-edged blobs
    back = (118.0 + 28.0 * _lowpass(rng, shape, 10.0, 1) + 14.0 * _lowpass(rng, shape, 2.5, 1)
            + 18.0 * _lowpass(rng, shape, 14.0, 3) + 20.0 * tint)
    edges = _lowpass(rng, shape, 9.0, 1) > 0.4
    back += np.where(edges, 1.0, 0.0) * rng.uniform(-60, 60, size=3).astype(np.float32)
    # foreground: finer, more contrasted texture with its own colour
    front = (128.0 + 35.0 * _lowpass(rng, shape, 1.5, 1) + 10.0 * _lowpass(rng, shape, 6.0, 3)
             + rng.uniform(-50, 50, size=3).astype(np.float32))
    mask = np.clip((_lowpass(rng, shape, 8.0, 1) - 0.45) * 3.0 + 0.5, 0.0, 1.0)
    front_a = np.concatenate([front, mask], axis=-1).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    vb = _velocity(rng, 1.0, 3.0, angle)
    vf = _velocity(rng, 1.5, 4.0, angle + rng.uniform(math.pi / 3, 5 * math.pi / 3))
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        b = _shifted(back, vb[0] * t, vb[1] * t, height, width)
        fa = _shifted(front_a, vf[0] * t, vf[1] * t, height, width)
        alpha = fa[..., 3:]
        out[t] = np.clip(np.rint(b * (1 - alpha) + fa[..., :3] * alpha), 0, 255).astype(np.uint8)
    return out
