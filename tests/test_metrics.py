"""Metrics and BT.709 colour conversion against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as reference_ms_ssim

from neurocodec.colour import rgb_to_yuv, rgb_to_yuv420, yuv420_to_rgb, yuv_to_rgb
from neurocodec.errors import InputError
from neurocodec.metrics import bits_per_pixel, ms_ssim, psnr, psnr_yuv420
from neurocodec.synthetic import moving_pattern


def test_psnr_of_known_errors() -> None:
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255), rel=1e-12)
    assert psnr(a, a - 1) == pytest.approx(48.130803608679106, abs=1e-9)
    b = a.copy()
    b[:4] += 4  # half the samples off by 4 -> MSE 8
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 8), rel=1e-12)
    assert psnr(a, b, peak=1.0) == pytest.approx(10 * math.log10(1 / 8), rel=1e-12)
    # no uint8 wrap-around: 0 vs 255 is an error of 255, not 1
    assert psnr(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)) == pytest.approx(0.0)


def test_psnr_rejects_bad_inputs() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(InputError):
        psnr(a, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(InputError):
        psnr(a, a.astype(np.float32))
    with pytest.raises(InputError):
        psnr(np.zeros((0,), np.uint8), np.zeros((0,), np.uint8))


def test_bt709_known_values() -> None:
    def yuv(rgb):
        return [float(p[0, 0]) for p in rgb_to_yuv(np.array([[rgb]], np.uint8))]

    assert yuv((255, 255, 255)) == pytest.approx([235.0, 128.0, 128.0], abs=1e-4)
    assert yuv((0, 0, 0)) == pytest.approx([16.0, 128.0, 128.0], abs=1e-4)
    # red: Y = 16 + 219 * 0.2126, Cb = 128 - 224 * 0.2126 / 1.8556, Cr = 128 + 112
    assert yuv((255, 0, 0)) == pytest.approx([62.5594, 102.3358, 240.0], abs=1e-3)
    # blue hits the Cb maximum, green the Cr minimum side
    assert yuv((0, 0, 255))[1] == pytest.approx(240.0, abs=1e-3)
    assert yuv((0, 255, 0)) == pytest.approx([172.6288, 41.6641, 26.2697], abs=1e-3)
    # BT.601 would give Y = 16 + 219 * 0.299 = 81.48 for red: make sure that is not what we use
    assert abs(yuv((255, 0, 0))[0] - 81.48) > 10
    planes = rgb_to_yuv420(np.array([[[255, 0, 0]] * 2] * 2, np.uint8))
    assert [int(p[0, 0]) for p in planes] == [63, 102, 240]


def test_colour_round_trips() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)
    # full resolution: limited range loses a little precision, but at most 1 code value
    assert np.abs(yuv_to_rgb(*rgb_to_yuv(rgb)).astype(int) - rgb).max() <= 1
    y, u, v = rgb_to_yuv420(rgb)
    assert y.shape == (33, 17) and u.shape == (17, 9) and v.shape == (17, 9)
    assert y.dtype == u.dtype == np.uint8
    # chroma is the mean over 2x2 blocks (the odd last row/column replicated)
    uf = rgb_to_yuv(rgb)[1]
    assert u[3, 2] == np.rint(uf[6:8, 4:6].mean())
    assert u[16, 8] == np.rint(uf[32, 16])
    assert u[16, 0] == np.rint(uf[32, 0:2].mean())
    # 2x2-constant pictures survive 4:2:0 with nearest upsampling; smooth ones nearly so
    blocks = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 2, 0), 2, 1)
    assert np.abs(yuv420_to_rgb(*rgb_to_yuv420(blocks), upsample="nearest").astype(int) - blocks).max() <= 2
    smooth = moving_pattern(64, 48, 1)[0]
    assert psnr(yuv420_to_rgb(*rgb_to_yuv420(smooth)), smooth) > 38
    with pytest.raises(InputError):
        yuv420_to_rgb(y, u[:-1], v)
    with pytest.raises(InputError):
        rgb_to_yuv420(rgb.astype(np.float32))


def test_psnr_yuv420_weighting_by_hand() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    a[...] = (200, 100, 50)
    b = np.zeros((4, 4, 3), np.uint8)
    b[...] = (190, 110, 60)

    def hand(r, g, bl):  # BT.709 limited range, float64, written out independently
        yl = 0.2126 * r + 0.7152 * g + 0.0722 * bl
        return (round(16 + 219 / 255 * yl), round(128 + 224 / 255 * (bl - yl) / 1.8556),
                round(128 + 224 / 255 * (r - yl) / 1.5748))

    ya, ua, va = hand(200, 100, 50)
    yb, ub, vb = hand(190, 110, 60)
    # on paper: Y'=117.65 -> Y 117.04, Cb 95.97, Cr 173.94; Y'=123.40 -> Y 121.98, Cb 97.99, Cr 165.15
    assert (ya, ua, va, yb, ub, vb) == (117, 96, 174, 122, 98, 165)
    want = {k: 20 * math.log10(255 / abs(x - z)) for k, x, z in
            (("y", ya, yb), ("u", ua, ub), ("v", va, vb))}
    got = psnr_yuv420(a, b)
    for k in "yuv":
        assert got[k] == pytest.approx(want[k], rel=1e-9)
    assert got["yuv"] == pytest.approx((6 * want["y"] + want["u"] + want["v"]) / 8, rel=1e-9)
    assert psnr_yuv420(a, a)["yuv"] == math.inf


def test_ms_ssim() -> None:
    rng = np.random.default_rng(1)
    img = moving_pattern(192, 176, 1)[0]
    assert ms_ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    scores = []
    for sigma in (2, 8, 25):
        noisy = np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)
        scores.append(ms_ssim(img, noisy))
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0
    # >160 px short side: exactly the standard 5-scale MS-SSIM of pytorch_msssim
    t = [torch.from_numpy(x).permute(2, 0, 1)[None].float() for x in (img, noisy)]
    assert ms_ssim(img, noisy) == pytest.approx(float(reference_ms_ssim(*t, data_range=255)), abs=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (17, 33), (48, 64), (100, 120)])
def test_ms_ssim_small_frames_fall_back(size: tuple[int, int]) -> None:
    h, w = size
    img = moving_pattern(w, h, 1)[0]
    noisy = np.clip(img.astype(int) + np.random.default_rng(0).integers(-20, 21, img.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    assert ms_ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= ms_ssim(img, noisy) < 1.0
    with pytest.raises(InputError):
        ms_ssim(img[..., 0], noisy[..., 0])


def test_bits_per_pixel() -> None:
    assert bits_per_pixel(1000, 100, 10, 1) == 8.0
    assert bits_per_pixel(0, 64, 48, 5) == 0.0
    assert bits_per_pixel(3 * 640 * 360 // 8, 640, 360, 3) == pytest.approx(1.0)
    with pytest.raises(InputError):
        bits_per_pixel(10, 0, 10, 1)
    with pytest.raises(InputError):
        bits_per_pixel(-1, 10, 10, 1)
