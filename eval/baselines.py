"""x264 / x265 anchors through PyAV, fed exactly the YUV neurocodec is measured on.

Why in-process PyAV and not an ``ffmpeg`` command: the anchor must see the
very same 8-bit BT.709 limited-range 4:2:0 planes as neurocodec's metrics
(:func:`neurocodec.colour.rgb_to_yuv420`), and its output must come back
through the very same :func:`neurocodec.colour.yuv420_to_rgb`. Any other
colour path (swscale, another matrix, another chroma siting) would shift the
anchor's PSNR by tenths of a dB to several dB.

Pipeline: RGB frames -> ``rgb_to_yuv420`` -> libx264/libx265 (raw Annex B
elementary stream, in memory, tagged BT.709 limited range) -> the bytes are
re-parsed and decoded by FFmpeg's h264/hevc decoder -> ``yuv420_to_rgb``.
The rate is the size of that elementary stream: every byte the encoder
wrote, parameter sets and SEI included (x265's informational SEI, 2.3 kB
repeated at every keyframe, is switched off with ``info=0``; x264 has no such
switch and writes ~600 bytes once). Odd widths/heights are edge-padded to
even before coding (4:2:0 needs even sizes) and cropped after decoding; the
padded planes equal those of the unpadded frame, so this costs only the
padding's few bits.

Coding structure (what :class:`BaselineConfig` turns into encoder options):

* always IPPP: ``bframes=0``, so no frame references the future, as in
  neurocodec; an IDR frame every ``intra_period`` frames
  (``keyint = min-keyint = intra_period``, ``scenecut=0`` so the period is
  exact, x265 ``open-gop=0``); intra period -1 means only the first frame is
  intra (keyint = frame count + 1);
* ``zerolatency=True`` adds ``tune=zerolatency``: no lookahead, no mb-tree /
  cu-tree, one frame in, one packet out -- true low delay like neurocodec;
* ``zerolatency=False`` keeps the preset's lookahead and mb-tree / cu-tree: a
  stronger anchor that still decodes with zero delay but encodes with some;
* ``threads=1`` by default: x264/x265 bitstreams depend on their frame/slice
  thread count, so one thread makes results identical on every machine (and
  encode speeds single-threaded). Psychovisual tuning stays at the preset's
  default (it costs a little PSNR); nothing is tuned for PSNR.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from neurocodec.colour import rgb_to_yuv420, yuv420_to_rgb
from neurocodec.errors import InputError

__all__ = ["CODECS", "PRESETS", "BaselineConfig", "BaselineResult", "decode_stream", "encode_baseline",
           "encode_frames"]

#: codec name -> (PyAV encoder, PyAV decoder)
CODECS = {"x264": ("libx264", "h264"), "x265": ("libx265", "hevc")}
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
_BT709, _LIMITED = 1, 1  # AVCOL_SPC/PRI/TRC_BT709, AVCOL_RANGE_MPEG
_START_CODE = re.compile(b"\x00\x00\x01")
_PICT_TYPES = {1: "I", 2: "P", 3: "B"}  # AVPictureType


@dataclass(frozen=True)
class BaselineConfig:
    """One anchor configuration: codec, preset, low-delay flavour and rate control."""

    codec: str = "x264"
    preset: str = "medium"
    zerolatency: bool = True
    crf: float | None = 23.0  #: constant rate factor; exactly one of crf / qp
    qp: int | None = None  #: constant QP instead of CRF
    intra_period: int = 32  #: frames between IDR frames; -1: only the first frame
    threads: int = 1

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise InputError(f"unknown baseline codec {self.codec!r} (use {', '.join(CODECS)})")
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r} (use one of {', '.join(PRESETS)})")
        if (self.crf is None) == (self.qp is None):
            raise InputError("give exactly one of crf and qp")
        if self.intra_period == 0 or self.intra_period < -1:
            raise InputError(f"intra period must be >= 1 or -1, got {self.intra_period}")
        if self.threads < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")

    @classmethod
    def from_label(cls, codec: str, label: str, **kw: object) -> BaselineConfig:
        """``"zerolatency"`` (= medium + zerolatency), ``"PRESET"`` or ``"PRESET+zerolatency"``."""
        preset, _, tune = label.partition("+")
        if preset == "zerolatency" and not tune:
            preset, tune = "medium", "zerolatency"
        if tune not in ("", "zerolatency"):
            raise InputError(f"bad baseline preset {label!r}: use PRESET, PRESET+zerolatency or zerolatency")
        return cls(codec=codec, preset=preset, zerolatency=bool(tune), **kw)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """The curve name, e.g. ``"x264 medium+zerolatency"``."""
        return f"{self.codec} {self.preset}{'+zerolatency' if self.zerolatency else ''}"

    @property
    def rate_control(self) -> str:
        return f"crf={self.crf:g}" if self.crf is not None else f"qp={self.qp}"

    def options(self, frame_count: int) -> dict[str, str]:
        """The exact AVOptions handed to the encoder for a clip of ``frame_count`` frames."""
        keyint = self.intra_period if self.intra_period > 0 else frame_count + 1
        opts = {"preset": self.preset}
        if self.zerolatency:
            opts["tune"] = "zerolatency"
        opts.update({"crf": f"{self.crf:g}"} if self.crf is not None else {"qp": str(self.qp)})
        gop = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0"
        if self.codec == "x264":
            opts["threads"] = str(self.threads)
            opts["x264-params"] = gop
        else:
            opts["x265-params"] = (f"{gop}:open-gop=0:info=0:pools={self.threads}:frame-threads=1"
                                   ":log-level=error")
        return opts


@dataclass
class BaselineResult:
    """An encoded and decoded clip: byte counts, frame types, decoded frames, timings."""

    config: BaselineConfig
    options: dict[str, str]
    bitstream: bytes  #: the Annex B elementary stream (save as .264 / .265 to inspect)
    frame_bytes: list[int]  #: per frame, in display (= coding) order; they sum to len(bitstream)
    keyframes: list[bool]  #: the encoder's keyframe flag per frame
    header_bytes: int  #: parameter sets + SEI (non-VCL NAL units) inside bitstream
    frames: np.ndarray  #: decoded uint8 RGB [T, H, W, 3]
    encode_s: float  #: wall time in the encoder (colour conversion excluded)
    decode_s: float  #: wall time in parsing + decoding (colour conversion excluded)
    padded_to: tuple[int, int] | None = None  #: (width, height) coded when the input size was odd
    extra: dict[str, object] = field(default_factory=dict)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"expected uint8 RGB frames [T, H, W, 3], got {getattr(frames, 'dtype', type(frames))} "
                         f"{getattr(frames, 'shape', '')}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise InputError(f"no frames to encode: shape {frames.shape}")
    return frames


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Edge-replicate the last row/column of odd-sized frames (4:2:0 needs even sizes)."""
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _nal_sizes(data: bytes, hevc: bool) -> list[tuple[int, int]]:
    """``(nal_unit_type, bytes)`` of each NAL unit of an Annex B stream; the sizes sum to ``len(data)``.

    Each unit owns its start code (3 or 4 bytes; any leading zeros go to the first unit).
    """
    starts = [m.start() for m in _START_CODE.finditer(data)]
    bounds = [0] + [s - (1 if data[s - 1] == 0 else 0) for s in starts[1:]] + [len(data)]
    return [((data[s + 3] >> 1) & 0x3F if hevc else data[s + 3] & 0x1F, bounds[i + 1] - bounds[i])
            for i, s in enumerate(starts) if s + 3 < len(data)]


def _is_vcl(nal_type: int, hevc: bool) -> bool:
    return nal_type < 32 if hevc else 1 <= nal_type <= 5


def encode_frames(frames: np.ndarray, config: BaselineConfig, fps: Fraction | float = 30) -> BaselineResult:
    """Encode uint8 RGB ``[T, H, W, 3]``; the result's ``frames`` stay empty until :func:`decode_stream`."""
    frames = _check_frames(frames)
    coded = _pad_even(frames)
    t, h, w = coded.shape[:3]
    options = config.options(t)
    cc = av.CodecContext.create(CODECS[config.codec][0], "w")
    cc.width, cc.height, cc.pix_fmt = w, h, "yuv420p"
    rate = Fraction(fps).limit_denominator(1_001_000)
    cc.time_base, cc.framerate = 1 / rate, rate
    cc.colorspace = cc.color_primaries = cc.color_trc = _BT709
    cc.color_range = _LIMITED
    cc.options = dict(options)
    packets: list[av.Packet] = []
    elapsed = 0.0
    try:
        for i, rgb in enumerate(coded):
            planes = np.concatenate([p.ravel() for p in rgb_to_yuv420(rgb)]).reshape(-1, w)
            vf = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            vf.pts, vf.colorspace, vf.color_range = i, _BT709, _LIMITED
            t0 = time.perf_counter()
            packets += cc.encode(vf)
            elapsed += time.perf_counter() - t0
        t0 = time.perf_counter()
        packets += cc.encode(None)
        elapsed += time.perf_counter() - t0
    except av.FFmpegError as e:
        raise InputError(f"{config.label} {config.rate_control} failed with options {options}: {e}") from None
    if [p.pts for p in packets] != list(range(t)):
        raise InputError(f"{config.label}: expected one packet per frame in display order, "
                         f"got pts {[p.pts for p in packets]}")
    data = b"".join(bytes(p) for p in packets)
    hevc = config.codec == "x265"
    header = sum(size for typ, size in _nal_sizes(data, hevc) if not _is_vcl(typ, hevc))
    return BaselineResult(
        config=config, options=options, bitstream=data, frame_bytes=[p.size for p in packets],
        keyframes=[bool(p.is_keyframe) for p in packets], header_bytes=header,
        frames=np.empty((0, *frames.shape[1:]), np.uint8), encode_s=elapsed, decode_s=0.0,
        padded_to=(w, h) if coded.shape != frames.shape else None,
    )


def _planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """Y, U, V of a yuv420p frame without the row padding PyAV keeps (line_size)."""
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes[:3]]


def decode_stream(result: BaselineResult, width: int, height: int) -> BaselineResult:
    """Parse and decode ``result.bitstream`` with FFmpeg; fill ``frames`` (cropped to ``width x height``)."""
    dec = av.CodecContext.create(CODECS[result.config.codec][1], "r")
    decoded: list[av.VideoFrame] = []
    t0 = time.perf_counter()
    try:
        for packet in [*dec.parse(result.bitstream), *dec.parse(b"")]:
            decoded += dec.decode(packet)
        decoded += dec.decode(None)
    except av.FFmpegError as e:
        raise InputError(f"{result.config.label}: decoding its own stream failed: {e}") from None
    result.decode_s = time.perf_counter() - t0
    if len(decoded) != len(result.frame_bytes):
        raise InputError(f"{result.config.label}: decoded {len(decoded)} frames, encoded {len(result.frame_bytes)}")
    if decoded[0].format.name != "yuv420p":
        raise InputError(f"{result.config.label}: decoder returned {decoded[0].format.name}, expected yuv420p")
    result.frames = np.stack([yuv420_to_rgb(*_planes(f))[:height, :width] for f in decoded])
    result.extra["decoded_pict_types"] = "".join(_PICT_TYPES.get(int(f.pict_type), "?") for f in decoded)
    return result


def encode_baseline(frames: np.ndarray, config: BaselineConfig, fps: Fraction | float = 30) -> BaselineResult:
    """Encode then decode ``frames`` (uint8 RGB ``[T, H, W, 3]``) with one anchor configuration."""
    result = encode_frames(frames, config, fps)
    return decode_stream(result, frames.shape[2], frames.shape[1])
