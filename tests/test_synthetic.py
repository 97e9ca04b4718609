"""Synthetic clips: shapes, determinism and real (but coherent) motion."""

from __future__ import annotations

import numpy as np
import pytest

from neurocodec.errors import InputError
from neurocodec.metrics import psnr
from neurocodec.synthetic import demo_clip, moving_pattern

MAKERS = [demo_clip, moving_pattern]


def test_demo_clip_default_shape() -> None:
    clip = demo_clip()
    assert clip.shape == (32, 360, 640, 3) and clip.dtype == np.uint8
    assert clip.flags["C_CONTIGUOUS"]
    assert 20 < clip.mean() < 235 and clip.std() > 20  # a real picture, not a flat field


@pytest.mark.parametrize("make", MAKERS)
def test_deterministic_per_seed(make) -> None:
    a = make(96, 64, 4, seed=5)
    np.testing.assert_array_equal(a, make(96, 64, 4, seed=5))
    assert not np.array_equal(a, make(96, 64, 4, seed=6))


@pytest.mark.parametrize("make", MAKERS)
def test_consecutive_frames_move_coherently(make) -> None:
    clip = make(160, 96, 8, seed=0)
    for t in range(7):
        assert not np.array_equal(clip[t], clip[t + 1])
        # differ by motion, yet clearly related (not independent pictures, not frozen)
        assert 14.0 < psnr(clip[t], clip[t + 1]) < 45.0
    # unrelated content scores far lower than neighbours do
    assert psnr(clip[0], clip[0][::-1, ::-1]) < psnr(clip[0], clip[1])


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("size", [(33, 17), (1, 1), (17, 33), (2, 1)])
def test_any_size(make, size: tuple[int, int]) -> None:
    w, h = size
    clip = make(w, h, 3)
    assert clip.shape == (3, h, w, 3) and clip.dtype == np.uint8


@pytest.mark.parametrize("make", MAKERS)
def test_bad_arguments(make) -> None:
    assert make(8, 8, 0).shape == (0, 8, 8, 3)
    for args in ((0, 8, 2), (8, -1, 2), (8, 8, -1), (8.5, 8, 2)):
        with pytest.raises(InputError):
            make(*args)


def test_moving_pattern_motion_is_translation() -> None:
    """The background shifts by a sub-pixel amount per frame: shifting back aligns frames."""
    clip = moving_pattern(128, 96, 2, seed=2).astype(float)
    # best integer shift between frames leaves far less error than no shift at all
    errs = {(dy, dx): np.mean((clip[1, 8:-8, 8:-8] - clip[0, 8 + dy:88 + dy, 8 + dx:120 + dx]) ** 2)
            for dy in range(-5, 6) for dx in range(-5, 6)}
    assert min(errs.values()) < 0.6 * errs[(0, 0)]
