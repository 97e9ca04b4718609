"""Video files in and out (PyAV), as uint8 RGB ``[H, W, 3]`` frames.

Why: the codec and metrics work on RGB; containers, pixel formats, colour
matrices and ranges are settled here once. Reading takes any container FFmpeg
demuxes (mp4, mkv, avi, webm, mov, y4m, ...), raw ``.yuv`` (given ``size``) and
PNG directories. Y'CbCr uses the stream's matrix tag if explicit, else BT.709;
its range tag, else limited (full for ``yuvj*``). swscale's bilinear
full-chroma path matches :func:`neurocodec.colour.yuv420_to_rgb` to 1 code
value; odd-sized BT.709 yuv420p goes through that function itself. Writing
uses :func:`neurocodec.colour.rgb_to_yuv420` (BT.709 limited, tagged so) and
publishes atomically. Unreadable/unwritable files raise VideoIOError naming
the path, bad arguments InputError; no raw ``av`` exception escapes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import av
import numpy as np
from av.video.reformatter import ColorRange, Interpolation
from PIL import Image

from neurocodec.colour import rgb_to_yuv, rgb_to_yuv420, yuv420_to_rgb
from neurocodec.errors import InputError, VideoIOError

__all__ = ["VideoInfo", "VideoWriter", "output_kind", "probe", "read_frames", "write_video"]

_FILE_KINDS = {".mp4": "mp4", ".mkv": "mkv", ".mov": "mov", ".y4m": "y4m"}
_AV_MUXER = {"mp4": "mp4", "mkv": "matroska", "mov": "mov"}
_DEFAULT_FPS = Fraction(30)
# AVColorSpace tag -> swscale matrix; anything else (unspecified, RGB, reserved) -> BT.709.
_SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
_INTERP = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
_BT709 = 1  # AVCOL_SPC/PRI/TRC_BT709 all equal 1
_MPEG_RANGE = 1  # AVCOL_RANGE_MPEG (limited)

Fps = Fraction | float | str


@dataclass(frozen=True)
class VideoInfo:
    """Geometry and timing of a video; ``frame_count`` is None when the container does not say."""

    width: int
    height: int
    fps: Fraction
    frame_count: int | None


def _fail(path: str | os.PathLike, reason: object) -> VideoIOError:
    return VideoIOError(f"{os.fspath(path)}: {reason}")


def _as_fps(fps: Fps | None) -> Fraction:
    if fps is None:
        return _DEFAULT_FPS
    try:
        f = Fraction(fps).limit_denominator(1_001_000) if isinstance(fps, float) else Fraction(fps)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise InputError(f"invalid frame rate {fps!r}: {e}") from None
    if f <= 0:
        raise InputError(f"frame rate must be positive, got {fps!r}")
    return f


def output_kind(path: str | os.PathLike) -> str:
    """``"mp4" | "mkv" | "mov" | "y4m" | "png-dir"`` for an output path, else InputError.

    A known suffix (any case) decides; otherwise a path ending in a separator, an
    existing directory or a suffix-less name is a PNG directory.
    """
    s = os.fspath(path)
    p = Path(s)
    trailing_sep = s.endswith(("/", os.sep))
    if (kind := _FILE_KINDS.get(p.suffix.lower())) and not trailing_sep:
        return kind
    if trailing_sep or p.is_dir() or p.suffix == "":
        return "png-dir"
    raise InputError(f"{s}: unsupported output type {p.suffix!r} (use .mp4, .mkv, .mov, .y4m or a PNG directory)")


# ----------------------------------------------------------------------------- reading


def _existing(path: str | os.PathLike) -> tuple[Path, list[Path] | None]:
    """``(path, sorted PNG files if it is a directory else None)``; VideoIOError if missing/empty."""
    p = Path(path)
    if not p.exists():
        raise _fail(path, "no such file or directory")
    if not p.is_dir():
        return p, None
    files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".png" and f.is_file())
    if not files:
        raise _fail(p, "directory contains no .png frames")
    return p, files


def _load_png(f: Path, size_only: bool = False) -> Any:
    try:
        with Image.open(f) as im:
            return im.size if size_only else np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except (OSError, ValueError) as e:
        raise _fail(f, f"cannot read image: {e}") from None


def _open(p: Path, size: tuple[int, int] | None, pix_fmt: str, fps: Fps | None) -> tuple[Any, Any, bool]:
    """Open ``p`` with PyAV; returns ``(container, first video stream, is_raw)``."""
    raw = p.suffix.lower() == ".yuv"
    try:
        if raw:
            if size is None:
                raise InputError(f"{p}: raw .yuv needs size=(width, height)")
            w, h = (int(x) for x in size)
            if w < 1 or h < 1 or pix_fmt not in av.video.format.names:
                raise InputError(f"bad raw video description: size {size}, pix_fmt {pix_fmt!r}")
            opts = {"video_size": f"{w}x{h}", "pixel_format": pix_fmt, "framerate": str(_as_fps(fps))}
            container = av.open(os.fspath(p), format="rawvideo", options=opts)
        else:
            container = av.open(os.fspath(p))
    except (av.FFmpegError, OSError) as e:
        raise _fail(p, f"cannot open as video: {e}") from None
    if not container.streams.video:
        container.close()
        raise _fail(p, "contains no video stream")
    return container, container.streams.video[0], raw


def probe(path: str | os.PathLike, *, size: tuple[int, int] | None = None,
          pix_fmt: str = "yuv420p", fps: Fps | None = None) -> VideoInfo:
    """Width, height, frame rate and frame count (exact, or None e.g. for mkv) of a video.

    ``size``/``pix_fmt``/``fps`` describe raw ``.yuv`` files, which store none of
    them (``fps`` also PNG directories; default 30); containers use their own.
    """
    p, files = _existing(path)
    if files is not None:
        return VideoInfo(*_load_png(files[0], size_only=True), _as_fps(fps), len(files))
    container, stream, raw = _open(p, size, pix_fmt, fps)
    try:
        # The nominal rate (30, 30000/1001), not the duration-derived average (2160/77 for a
        # 30 fps clip whose last frame is short).
        rate = _as_fps(fps) if raw else (stream.guessed_rate or stream.base_rate or stream.average_rate)
        rate = Fraction(rate) if rate else _DEFAULT_FPS
        count = stream.frames or None
        if count is None and container.format.name in ("rawvideo", "yuv4mpegpipe") and stream.duration:
            count = round(stream.duration * stream.time_base * (stream.average_rate or rate))
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, rate, count)
    finally:
        container.close()


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of a decoded frame (matrix/range rules in the module doc).

    Odd sizes bypass swscale, which stretches ceil(W/2) chroma by W/ceil(W/2)
    rather than 2 (35 vs 43 dB on a 33x17 textured round trip).
    """
    fmt = frame.format
    if fmt.is_rgb:
        return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    rng = frame.color_range
    if rng not in (ColorRange.MPEG, ColorRange.JPEG):
        rng = ColorRange.JPEG if fmt.name.startswith("yuvj") else ColorRange.MPEG
    matrix = _SWS_MATRIX.get(frame.colorspace, "ITU709")
    if (fmt.name == "yuv420p" and (frame.width % 2 or frame.height % 2)
            and matrix == "ITU709" and rng == ColorRange.MPEG):
        # PyAV planes are line_size * height bytes; drop the row padding
        return yuv420_to_rgb(*(np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
                               for p in frame.planes[:3]))
    return np.ascontiguousarray(frame.to_ndarray(
        format="rgb24", src_colorspace=matrix, src_color_range=rng,
        dst_color_range=ColorRange.JPEG, interpolation=_INTERP))


def _iter_pngs(files: list[Path]) -> Iterator[np.ndarray]:
    first = None
    for f in files:
        img = _load_png(f)
        first = img.shape if first is None else first
        if img.shape != first:
            raise _fail(f, f"frame size {img.shape[1]}x{img.shape[0]} differs from the first frame's")
        yield img


def _iter_av(p: Path, container: Any, stream: Any, raw: bool, max_frames: int | None) -> Iterator[np.ndarray]:
    n, expected = 0, None
    stream.thread_type = "AUTO"
    try:
        for packet in container.demux(stream) if max_frames != 0 else ():
            if raw and packet.size and packet.size < (expected := expected or packet.size):
                warnings.warn(f"{p}: ignoring {packet.size} trailing bytes (incomplete frame)", stacklevel=2)
                break  # trailing partial frame of a raw file
            for frame in packet.decode():
                yield _to_rgb(frame)
                n += 1
                if n == max_frames:
                    return
        if n == 0 and max_frames != 0:
            raise _fail(p, "no decodable video frames (empty or damaged file)")
    except (av.FFmpegError, OSError) as e:
        raise _fail(p, f"decoding failed after {n} frames: {e}") from None
    finally:
        container.close()


def read_frames(path: str | os.PathLike, *, max_frames: int | None = None,
                size: tuple[int, int] | None = None, pix_fmt: str = "yuv420p",
                fps: Fps | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of a video file or PNG directory as C-contiguous uint8 RGB ``[H, W, 3]``.

    Opens eagerly (a bad file raises VideoIOError here, not at ``next()``).
    ``size``/``pix_fmt``/``fps`` describe raw ``.yuv`` (``size=(w, h)`` required);
    containers ignore them. A raw file's trailing partial frame is dropped with
    a warning; decoding errors, or no frame at all, raise VideoIOError.
    """
    if max_frames is not None and max_frames < 0:
        raise InputError(f"max_frames must be >= 0, got {max_frames}")
    p, files = _existing(path)
    if files is not None:
        return _iter_pngs(files[:max_frames])
    container, stream, raw = _open(p, size, pix_fmt, fps)
    return _iter_av(p, container, stream, raw, max_frames)


# ----------------------------------------------------------------------------- writing


def _discard(st: SimpleNamespace) -> None:
    """Free an unfinished write's resources (``st.container``/``st.file``) and delete ``st.tmp``."""
    for res in (st.container, st.file):
        if res is not None:
            with contextlib.suppress(Exception):  # best effort: we are already failing
                res.close()
    st.container = st.file = None
    if os.path.isdir(st.tmp):
        shutil.rmtree(st.tmp, ignore_errors=True)
    elif os.path.lexists(st.tmp):
        os.unlink(st.tmp)


class VideoWriter:
    """Write uint8 RGB ``[H, W, 3]`` frames to a video file or PNG directory, atomically.

    By path (:func:`output_kind`): ``.mp4``/``.mkv``/``.mov`` -> libx264 (or
    ``codec``, e.g. ``"libx265"``), CRF ``crf`` (default 12, visually lossless),
    preset medium, BT.709 limited range and tags; yuv420p for even sizes, yuv444p
    for odd ones (nothing padded or cropped). ``.y4m`` -> raw yuv420p (C420jpeg:
    centre-sited, ceil-sized chroma), BT.709 limited. PNG directory ->
    ``frame_000000.png``, ... (lossless; the target must not exist or be an empty
    directory: frames are never mixed with old files). ``crf`` is ignored for y4m/PNG.
    Output goes to a hidden temporary beside the target, moved into place by
    :meth:`close`; if the ``with`` block raises, or the writer is collected
    unclosed, the temporary is deleted and the target left untouched. Closing
    a writer that received no frames raises VideoIOError.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fps, *,
                 codec: str | None = None, crf: int | None = None) -> None:
        self.kind, self.path = output_kind(path), Path(path)
        if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in (width, height)):
            raise InputError(f"width and height must be positive integers, got {width}x{height}")
        if (codec is not None and self.kind in ("y4m", "png-dir")) or not 0 <= (crf or 0) <= 51:
            raise InputError(f"{path}: bad codec {codec!r} / crf {crf!r} (codec: containers only; crf 0..51)")
        self.width, self.height, self.fps = int(width), int(height), _as_fps(fps)
        self.frames_written, self._closed = 0, False
        parent, is_dir = self.path.parent, self.kind == "png-dir"
        if not parent.is_dir():
            raise _fail(path, f"output directory {parent} does not exist")
        p = self.path  # files may be overwritten; a PNG directory only replaces an empty one
        if (p.exists() and p.is_dir() != is_dir) or (is_dir and p.is_dir() and any(p.iterdir())):
            raise _fail(path, "exists and is a directory" if not is_dir else "exists and is not an empty directory")
        kw = {"prefix": f".{self.path.name}.", "suffix": ".tmp", "dir": parent}
        try:
            tmp = tempfile.mkdtemp(**kw) if is_dir else tempfile.mkstemp(**kw)
            if not is_dir:
                os.close(tmp[0])
                tmp = tmp[1]
        except OSError as e:
            raise _fail(path, f"cannot create a temporary output: {e}") from None
        self._st = SimpleNamespace(tmp=tmp, container=None, file=None)
        self._finalizer = weakref.finalize(self, _discard, self._st)
        try:
            self._open_backend(codec, crf)
        except BaseException:
            self._finalizer()
            raise

    def _open_backend(self, codec: str | None, crf: int | None) -> None:
        st, w, h = self._st, self.width, self.height
        if self.kind == "y4m":
            st.file = open(st.tmp, "wb")  # noqa: SIM115 - closed by close()/_discard
            st.file.write(f"YUV4MPEG2 W{w} H{h} F{self.fps.numerator}:{self.fps.denominator} Ip A1:1 "
                          "C420jpeg XYSCSS=420JPEG XCOLORRANGE=LIMITED\n".encode("ascii"))
        elif self.kind != "png-dir":
            codec = codec or "libx264"
            opts = {} if self.kind == "mkv" else {"movflags": "+faststart"}  # index up front
            try:
                st.container = av.open(st.tmp, mode="w", format=_AV_MUXER[self.kind], options=opts)
                stream = st.container.add_stream(codec, rate=self.fps)
            except av.codec.codec.UnknownCodecError:
                raise InputError(f"unknown codec {codec!r}") from None
            except (av.FFmpegError, OSError, ValueError) as e:
                raise _fail(self.path, f"cannot start encoder {codec}: {e}") from None
            stream.width, stream.height = w, h
            stream.pix_fmt = self._pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
            if codec in ("libx264", "libx265"):
                stream.options = {"crf": str(12 if crf is None else crf), "preset": "medium"}
            cc = stream.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = _BT709
            cc.color_range = _MPEG_RANGE
            self._stream = stream

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close() if exc_type is None else self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB ``[height, width, 3]`` frame (InputError for anything else)."""
        if self._closed:
            raise InputError(f"{self.path}: writer is closed")
        want = (self.height, self.width, 3)
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != want:
            raise InputError(f"frame must be uint8 {list(want)}, got {getattr(frame, 'dtype', type(frame))} "
                             f"{getattr(frame, 'shape', '')}")
        frame, st = np.ascontiguousarray(frame), self._st
        try:
            if self.kind == "png-dir":
                name = os.path.join(st.tmp, f"frame_{self.frames_written:06d}.png")
                Image.fromarray(frame, "RGB").save(name, compress_level=1)
            elif self.kind == "y4m":
                st.file.writelines([b"FRAME\n", *(pl.tobytes() for pl in rgb_to_yuv420(frame))])
            else:
                self._encode(self._av_frame(frame))
        except (av.FFmpegError, OSError) as e:
            raise _fail(self.path, f"writing frame {self.frames_written} failed: {e}") from None
        self.frames_written += 1

    def _av_frame(self, frame: np.ndarray) -> av.VideoFrame:
        if self._pix_fmt == "yuv420p":
            packed = np.concatenate([p.ravel() for p in rgb_to_yuv420(frame)]).reshape(-1, self.width)
            vf = av.VideoFrame.from_ndarray(packed, format="yuv420p")
        else:
            planes = np.clip(np.rint(np.stack(rgb_to_yuv(frame))), 0, 255).astype(np.uint8)
            vf = av.VideoFrame.from_ndarray(planes, format="yuv444p")
        vf.colorspace, vf.color_range, vf.pts = _BT709, _MPEG_RANGE, self.frames_written
        return vf

    def _encode(self, vf: av.VideoFrame | None) -> None:
        for packet in self._stream.encode(vf):
            self._st.container.mux(packet)

    def close(self) -> None:
        """Finish the output and move it into place (no-op if already closed)."""
        if self._closed:
            return
        self._closed, st = True, self._st
        try:
            if self.frames_written == 0:
                raise _fail(self.path, "no frames were written")
            if st.container is not None:
                self._encode(None)
            for res in (st.container, st.file):
                if res is not None:
                    res.close()
            st.container = st.file = None
            os.replace(st.tmp, self.path)  # a directory may replace an empty one
        except BaseException as e:
            self._finalizer()
            if isinstance(e, (av.FFmpegError, OSError)):
                raise _fail(self.path, f"finishing the output failed: {e}") from None
            raise
        self._finalizer.detach()

    def abort(self) -> None:
        """Discard everything written so far; the target path is left untouched."""
        self._closed = True
        self._finalizer()


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: Fps, **kw: Any) -> int:
    """Write all ``frames`` (uint8 RGB, size from the first) to ``path``; returns the count.

    ``kw`` goes to :class:`VideoWriter` (``codec``, ``crf``). Empty ``frames``
    raise VideoIOError and write nothing.
    """
    output_kind(path)
    it = iter(frames)
    if (first := next(it, None)) is None:
        raise _fail(path, "no frames to write")
    if getattr(first, "ndim", 0) != 3:
        raise InputError(f"frames must be uint8 [H, W, 3] arrays, got {getattr(first, 'shape', type(first))}")
    with VideoWriter(path, first.shape[1], first.shape[0], fps, **kw) as w:
        w.write(first)
        for f in it:
            w.write(f)
    return w.frames_written
