"""Video file round trips, colour correctness, error handling and atomic output of neurocodec.io."""

from __future__ import annotations

import gc
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from neurocodec.colour import rgb_to_yuv420, yuv420_to_rgb
from neurocodec.errors import InputError, VideoIOError
from neurocodec.io import VideoInfo, VideoWriter, output_kind, probe, read_frames, write_video
from neurocodec.metrics import psnr, psnr_yuv420
from neurocodec.synthetic import moving_pattern

NTSC = Fraction(30000, 1001)


def smooth_clip(width: int, height: int, frames: int) -> np.ndarray:
    """Smooth colour fields drifting sub-pixel: what 'visually lossless' should keep > 38 dB."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = []
    for t in range(frames):
        x = xx + 0.7 * t
        y = yy + 0.3 * t
        r = 128 + 90 * np.sin(x / 9.0) * np.cos(y / 13.0)
        g = 128 + 80 * np.cos((x + y) / 11.0)
        b = 128 + 70 * np.sin(y / 7.0 - x / 17.0)
        out.append(np.stack([r, g, b], -1))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def ref420(frames: np.ndarray) -> np.ndarray:
    """What a lossless 4:2:0 store-and-reload of ``frames`` gives (numpy reference)."""
    return np.stack([yuv420_to_rgb(*rgb_to_yuv420(f)) for f in frames])


def test_output_kind() -> None:
    assert output_kind("a.mp4") == "mp4"
    assert output_kind("a.MKV") == "mkv"
    assert output_kind("a.mov") == "mov"
    assert output_kind("dir/a.y4m") == "y4m"
    assert output_kind("frames") == "png-dir"
    assert output_kind("frames.d/") == "png-dir"
    assert output_kind("frames.mp4/") == "png-dir"
    for bad in ("a.avi", "a.gif", "a.png", "a.yuv"):
        with pytest.raises(InputError):
            output_kind(bad)


@pytest.mark.parametrize("ext", ["mp4", "mkv", "mov", "y4m"])
def test_lossy_round_trip(tmp_path, ext: str) -> None:
    clip = smooth_clip(64, 48, 5)
    path = tmp_path / f"clip.{ext}"
    assert write_video(path, clip, NTSC) == 5
    back = np.stack(list(read_frames(path)))
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert back.flags["C_CONTIGUOUS"]
    assert psnr(back, clip) > 38.0
    info = probe(path)
    assert (info.width, info.height, info.fps) == (64, 48, NTSC)
    assert info.frame_count in (5, None)
    # textured content: the Y'CbCr planes survive well too
    tex = moving_pattern(64, 48, 4, seed=3)
    write_video(path, tex, 25)
    back = list(read_frames(path))
    assert min(psnr_yuv420(a, b)["y"] for a, b in zip(back, tex, strict=True)) > 40.0


def test_y4m_stores_exact_420_planes(tmp_path) -> None:
    clip = moving_pattern(64, 48, 3)
    path = tmp_path / "c.y4m"
    write_video(path, clip, 24)
    back = np.stack(list(read_frames(path)))
    # swscale's bilinear path agrees with colour.yuv420_to_rgb to 1 code value
    assert np.abs(back.astype(int) - ref420(clip)).max() <= 1
    assert probe(path) == VideoInfo(64, 48, Fraction(24), 3)


@pytest.mark.parametrize("trailing_slash", [False, True])
def test_png_dir_round_trip_is_exact(tmp_path, trailing_slash: bool) -> None:
    clip = moving_pattern(40, 30, 4)
    path = str(tmp_path / "frames") + ("/" if trailing_slash else "")
    assert write_video(path, clip, 30) == 4
    names = sorted(os.listdir(tmp_path / "frames"))
    assert names == [f"frame_{i:06d}.png" for i in range(4)]
    back = np.stack(list(read_frames(path)))
    np.testing.assert_array_equal(back, clip)
    assert probe(path, fps=NTSC) == VideoInfo(40, 30, NTSC, 4)
    assert len(list(read_frames(path, max_frames=3))) == 3


def test_png_dir_needs_a_new_or_empty_directory(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_video(empty, smooth_clip(8, 8, 2), 30)
    assert sorted(os.listdir(empty)) == ["frame_000000.png", "frame_000001.png"]
    with pytest.raises(VideoIOError):  # never mixes new frames with old files
        VideoWriter(empty, 8, 8, 30)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VideoIOError):
        VideoWriter(tmp_path / "file", 8, 8, 30)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(VideoIOError):  # a file output cannot replace a directory
        VideoWriter(tmp_path / "dir.mp4", 8, 8, 30)
    assert sorted(os.listdir(tmp_path)) == ["dir.mp4", "empty", "file"]


@pytest.mark.parametrize("kind", ["y4m", "png", "mp4"])
def test_odd_sizes(tmp_path, kind: str) -> None:
    clip = smooth_clip(33, 17, 4)
    path = tmp_path / ("odd" if kind == "png" else f"odd.{kind}")
    write_video(path, clip, 30)
    back = np.stack(list(read_frames(path)))
    assert back.shape == (4, 17, 33, 3)
    assert probe(path).width == 33 and probe(path).height == 17
    if kind == "png":
        np.testing.assert_array_equal(back, clip)
    elif kind == "y4m":
        np.testing.assert_array_equal(back, ref420(clip))  # odd 4:2:0 goes through colour.py
    else:
        with av.open(str(path)) as c:  # odd sizes are stored 4:4:4, nothing cropped
            assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"
        assert psnr(back, clip) > 38.0


def test_mp4_is_tagged_bt709_limited(tmp_path) -> None:
    path = tmp_path / "t.mp4"
    write_video(path, smooth_clip(32, 32, 2), 30)
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, 1)


@pytest.mark.parametrize("ext", ["mp4", "y4m"])
def test_colour_bars_keep_their_colours(tmp_path, ext: str) -> None:
    """Catches a wrong matrix (BT.601 shifts yellow's blue by ~10) or range (white -> 235)."""
    bars = np.array([[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0],
                     [255, 0, 255], [255, 0, 0], [0, 0, 255], [0, 0, 0]], np.uint8)
    img = np.ascontiguousarray(np.repeat(bars, 16, axis=0)[None].repeat(64, axis=0))
    path = tmp_path / f"bars.{ext}"
    write_video(path, [img] * 2, 25)
    back = next(read_frames(path))
    inner = np.s_[:, 3:13]  # away from the bar edges, where 4:2:0 chroma must blur
    got = np.stack([back[:, 16 * i:16 * i + 16][inner].reshape(-1, 3).mean(0) for i in range(8)])
    np.testing.assert_allclose(got, bars, atol=2.0)
    assert psnr(np.concatenate([back[:, 16 * i:16 * i + 16][inner] for i in range(8)], 1),
                np.concatenate([img[:, 16 * i:16 * i + 16][inner] for i in range(8)], 1)) > 40.0


def _write_raw(path, clip: np.ndarray, extra: bytes = b"") -> None:
    with open(path, "wb") as f:
        for frame in clip:
            for plane in rgb_to_yuv420(frame):
                f.write(plane.tobytes())
        f.write(extra)


@pytest.mark.parametrize("size", [(64, 48), (33, 17)])
def test_raw_yuv(tmp_path, size: tuple[int, int]) -> None:
    w, h = size
    clip = moving_pattern(w, h, 3)
    path = tmp_path / "raw.yuv"
    _write_raw(path, clip)
    back = np.stack(list(read_frames(path, size=(w, h), fps=25)))
    assert back.shape == (3, h, w, 3)
    assert np.abs(back.astype(int) - ref420(clip)).max() <= 1
    assert probe(path, size=(w, h), fps=NTSC) == VideoInfo(w, h, NTSC, 3)
    assert probe(path, size=(w, h)).fps == 30
    assert len(list(read_frames(path, size=(w, h), max_frames=2))) == 2
    with pytest.raises(InputError):
        read_frames(path)
    with pytest.raises(InputError):
        probe(path, size=(w, h), pix_fmt="no_such_format")


def test_raw_yuv_trailing_partial_frame_is_dropped(tmp_path) -> None:
    path = tmp_path / "raw.yuv"
    _write_raw(path, moving_pattern(16, 16, 2), extra=b"\x80" * 100)
    with pytest.warns(UserWarning, match="trailing"):
        frames = list(read_frames(path, size=(16, 16)))
    assert len(frames) == 2


@pytest.mark.parametrize("ext", ["mp4", "mkv", "y4m"])
def test_probe_keeps_fractional_fps(tmp_path, ext: str) -> None:
    path = tmp_path / f"f.{ext}"
    write_video(path, smooth_clip(16, 16, 3), NTSC)
    info = probe(path)
    assert isinstance(info.fps, Fraction) and info.fps == NTSC
    assert info.frame_count in ((3,) if ext != "mkv" else (3, None))


def test_max_frames(tmp_path) -> None:
    path = tmp_path / "m.mp4"
    write_video(path, smooth_clip(16, 16, 6), 30)
    assert len(list(read_frames(path, max_frames=4))) == 4
    assert list(read_frames(path, max_frames=0)) == []
    with pytest.raises(InputError):
        read_frames(path, max_frames=-1)


def test_unreadable_inputs_raise_video_io_error(tmp_path) -> None:
    missing = tmp_path / "missing.mp4"
    with pytest.raises(VideoIOError, match="missing.mp4"):
        read_frames(missing)
    with pytest.raises(VideoIOError):
        probe(missing)
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoIOError, match="notes.mp4"):
        read_frames(fake)
    with pytest.raises(VideoIOError):
        probe(fake)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoIOError):
        read_frames(empty)


def test_truncated_file_stops_or_raises(tmp_path) -> None:
    good = tmp_path / "g.mkv"
    write_video(good, moving_pattern(64, 48, 8), 30)
    data = good.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    try:
        frames = list(read_frames(cut))
    except VideoIOError:
        return
    assert len(frames) < 8


@pytest.mark.parametrize("name", ["out.mp4", "out.y4m", "outdir"])
def test_exception_in_with_block_leaves_nothing(tmp_path, name: str) -> None:
    target = tmp_path / name
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 32, 16, 30) as w:
            w.write(np.zeros((16, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_output(tmp_path) -> None:
    target = tmp_path / "out.y4m"
    write_video(target, smooth_clip(16, 16, 2), 30)
    before = target.read_bytes()
    with pytest.raises(InputError):
        with VideoWriter(target, 16, 16, 30) as w:
            w.write(np.zeros((16, 16, 3), np.uint8))
            w.write(np.zeros((8, 8, 3), np.uint8))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.y4m"]


def test_unclosed_writer_is_cleaned_up(tmp_path) -> None:
    w = VideoWriter(tmp_path / "x.mp4", 16, 16, 30)
    w.write(np.zeros((16, 16, 3), np.uint8))
    del w
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_zero_frames_is_an_error_and_leaves_nothing(tmp_path) -> None:
    with pytest.raises(VideoIOError):
        with VideoWriter(tmp_path / "z.mp4", 16, 16, 30):
            pass
    with pytest.raises(VideoIOError):
        write_video(tmp_path / "z.y4m", [], 30)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [np.zeros((16, 15, 3), np.uint8), np.zeros((16, 16), np.uint8),
                                 np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 3), np.float32),
                                 [[0] * 3] * 16])
def test_wrong_frames_raise_input_error(tmp_path, bad) -> None:
    w = VideoWriter(tmp_path / "w.mp4", 16, 16, 30)
    with pytest.raises(InputError):
        w.write(bad)
    w.abort()
    assert os.listdir(tmp_path) == []


def test_bad_writer_arguments(tmp_path) -> None:
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "a.avi", 16, 16, 30)
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "a.mp4", 0, 16, 30)
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "a.mp4", 16, 16, 0)
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "a.mp4", 16, 16, 30, crf=99)
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "a.mp4", 16, 16, 30, codec="no_such_codec")
    with pytest.raises(VideoIOError):
        VideoWriter(tmp_path / "nodir" / "a.mp4", 16, 16, 30)
    assert os.listdir(tmp_path) == []
