"""Streaming encoder and decoder: frames in, packets out, and back.

Low-delay P coding: frame ``t`` references only the decoded frame ``t - 1``
(an I-frame every ``gop`` frames, or only the first when ``gop`` is -1), so
:meth:`Encoder.encode` returns each frame's packet at once (a few frames
late when an :class:`~neurocodec.parallel.EntropyPool` runs the rANS coding)
and :meth:`Decoder.decode` returns each frame as soon as its packet arrives.

Frames are ``uint8`` RGB numpy arrays ``[H, W, 3]`` or float tensors
``[3, H, W]`` in ``[0, 1]``. The model works on frames padded (by edge
replication) to multiples of 64; outputs are cropped back.

The encoder keeps as its reference exactly what the decoder will output
(the decoder's computation on the same decoded latents, snapped to 8 bits),
so on the same device decoding reproduces the encoder's reconstruction bit
for bit.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from .container import (
    FrameType,
    Packet,
    StreamHeader,
    StreamWriter,
    code_to_quality,
    quality_to_code,
)
from .entropy import Coded, Parsed, Pending
from .errors import BitstreamError, InputError, ModelMismatchError
from .io import probe, read_frames
from .models import VideoModel, pad_to_stride, padded_size, to_reference
from .profiling import stage
from .refine import Refinement
from .zoo import DEFAULT_MODEL, load_model, model_identity, torch_device

if TYPE_CHECKING:
    from .parallel import EntropyPool

__all__ = ["Encoder", "Decoder", "Frame", "PRECISIONS", "P_OFFSETS", "encode", "decode", "atomic_output"]

Frame = np.ndarray | torch.Tensor

#: Largest frame a :class:`Decoder` accepts by default (8K): a stream header is
#: untrusted input, and a forged 16384x16384 header must not make the decoder
#: try to allocate tens of gigabytes.
MAX_PIXELS = 8192 * 4352


#: Arithmetic for the transforms (the entropy parameters are exact or float32
#: whatever is chosen, so every precision decodes every stream):
#: ``bf16`` is the fast choice on CPUs with bfloat16 units, ``fp16`` on GPUs.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Quality added to successive P-frames, cyclically from the first P-frame after
#: each I-frame, and clamped to [0, 1]: a better-coded P-frame now and then, the
#: others a little cheaper. A low-delay chain copies much of each reference into
#: the next frames, so bits spent on one frame are used again after it (as in
#: classical low-delay GOPs with QP offsets, and DCVC-DC's hierarchical quality).
#: Encoder-side only: each packet carries its own quality. Tuned on training
#: clips with ``python -m eval.mvrate ... --pattern`` (docs/encoder.md).
P_OFFSETS: tuple[float, ...] = (-0.1, -0.1, -0.1, 0.15)


def check_offsets(offsets: str | Iterable[float]) -> tuple[float, ...]:
    """``offsets`` (numbers, or their :func:`offsets_text`) as a tuple, or an :class:`InputError`
    saying what is wrong with them."""
    try:
        values = tuple(float(v) for v in (offsets.split(",") if isinstance(offsets, str) else offsets))
    except (TypeError, ValueError) as e:
        raise InputError(f"P-frame quality offsets must be numbers: {e}") from None
    if not 1 <= len(values) <= 64 or not all(-1.0 <= v <= 1.0 for v in values):  # also rejects NaN
        raise InputError(f"P-frame quality offsets: 1 to 64 numbers in [-1, 1], got {values}")
    return values


def offsets_text(offsets: Iterable[float]) -> str:
    """Offsets written the way :func:`check_offsets` reads them (``-0.1,0.15``)."""
    return ",".join(f"{v:g}" for v in offsets)


def emulated_bf16(device: torch.device) -> bool:
    """Whether bfloat16 on ``device`` is emulated: a CPU for which oneDNN has no bfloat16 kernels (AVX2
    only; AVX-512 cores have them, AVX512-BF16 and AMX in hardware), where every operand is converted and
    the transforms ran 7-22 times slower than in float32 (docs/results/cpu-train-speed/)."""
    if device.type != "cpu":
        return False
    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a torch without the query: assume the units are there
        return False


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _check_precision(device: torch.device, precision: str) -> None:
    """Validate ``precision`` now (not at the first frame), and warn where bf16 would be slow."""
    _autocast(device, precision)
    if precision == "bf16" and emulated_bf16(device):
        warnings.warn("this CPU has no bfloat16 units: bf16 is emulated and slower than fp32 here "
                      "(use fp32; any precision decodes any stream)", stacklevel=3)


def _resolve_model(model: str | VideoModel, device: torch.device) -> VideoModel:
    if not isinstance(model, VideoModel):
        model = load_model(model, device=device)
    model_identity(model)  # builds entropy tables and the hash if it has none
    if device.type == "cuda":  # one frame size per stream: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True
    # Channels-last convolutions run ~1.5x faster on CPU (and suit GPU tensor cores).
    return model.to(device=device, memory_format=torch.channels_last).eval()


def frame_to_tensor(frame: Frame, width: int, height: int, device: torch.device) -> torch.Tensor:
    """Validate a frame and return it as [1, 3, H, W] float in [0, 1] on ``device``."""
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
            raise InputError(
                f"expected a uint8 frame of shape {(height, width, 3)}, "
                f"got {frame.dtype} {tuple(frame.shape)}"
            )
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float() / 255.0
    elif isinstance(frame, torch.Tensor):
        if not frame.is_floating_point() or tuple(frame.shape) != (3, height, width):
            raise InputError(
                f"expected a float tensor of shape {(3, height, width)} in [0, 1], "
                f"got {frame.dtype} {tuple(frame.shape)}"
            )
        if not torch.isfinite(frame).all():
            raise InputError("frame tensor holds NaN or infinite values")
        x = frame.detach().to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
    else:
        raise InputError(f"a frame must be a numpy array or a torch tensor, got {type(frame).__name__}")
    return x.unsqueeze(0)


def _crop_to_uint8(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[1, 3, Hp, Wp] reference in [0, 1] on the 8-bit grid -> uint8 [H, W, 3], same device."""
    return x[0, :, :height, :width].mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def tensor_to_frame(x: torch.Tensor, width: int, height: int) -> np.ndarray:
    """[1, 3, Hp, Wp] reference in [0, 1] on the 8-bit grid -> uint8 [H, W, 3] numpy."""
    return _crop_to_uint8(x, width, height).cpu().numpy()


class Encoder:
    """Encodes frames one at a time into :class:`~neurocodec.container.Packet` s.

    >>> enc = Encoder(640, 360, quality=0.5)            # doctest: +SKIP
    >>> packets = enc.encode(frame)  # one packet per frame, returned at once
    >>> enc.encode(None)             # flush: nothing held back, unless a pool codes the rANS

    With a ``pool`` (:class:`~neurocodec.parallel.EntropyPool`), the rANS
    coding of each frame runs in its worker processes while the next frames
    go through the networks; packets then come out a few frames late, in
    order, with the same bytes. With ``refine`` steps, each frame's latent is
    optimised for its own rate-distortion loss before coding
    (:mod:`neurocodec.refine`): a lower loss per frame (how many bits that
    saves depends on the weights: the README measures it), several times
    slower, and any decoder decodes it. ``p_offsets`` (:data:`P_OFFSETS`)
    vary the quality of the P-frames around ``quality``; ``(0,)`` codes every
    frame at ``quality``.
    """

    def __init__(
        self,
        width: int,
        height: int,
        *,
        model: str | VideoModel = DEFAULT_MODEL,
        quality: float = 0.5,
        gop: int = 32,
        fps: Fraction | int | float = Fraction(30),
        frame_count: int | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        pool: EntropyPool | None = None,
        refine: int = 0,
        p_offsets: Iterable[float] = P_OFFSETS,
    ):
        if refine < 0:
            raise InputError(f"refine must be >= 0 steps, got {refine}")
        #: Adam steps of latent refinement per frame (:mod:`neurocodec.refine`): a lower loss, slower encoding
        self.refine = refine
        #: quality added to successive P-frames after each I-frame (:data:`P_OFFSETS`)
        self.p_offsets = check_offsets(p_offsets)
        self.device = torch_device(device)
        _check_precision(self.device, precision)
        self.precision = precision
        self.model = _resolve_model(model, self.device)
        name, digest = model_identity(self.model)
        #: rANS-encodes in its worker processes: packets then come out a few frames late
        self.pool = pool
        #: frames whose y streams are being coded by the pool: (packet type, pts, quality code, latents, futures)
        self._coding: deque[tuple[FrameType, int, int, tuple[Coded, ...], list[Future]]] = deque()
        self._quality_code = quality_to_code(quality)
        fps = Fraction(fps)
        if max(fps.numerator, fps.denominator) > 1_000_000:  # a float like 29.97: the nearest video rate
            fps = fps.limit_denominator(1001)
        self.header = StreamHeader(
            model=name, weight_hash=digest, width=width, height=height, fps=fps,
            gop=gop, quality=code_to_quality(self._quality_code), frame_count=frame_count,
        )
        self._ref: torch.Tensor | None = None
        self._pts = 0

    @property
    def frames_encoded(self) -> int:
        return self._pts

    @property
    def reconstruction(self) -> np.ndarray | None:
        """The last frame as the decoder will reconstruct it (uint8 [H, W, 3]), copied on request."""
        return None if self._ref is None else tensor_to_frame(self._ref, self.header.width, self.header.height)

    def encode(self, frame: Frame | None, *, quality: float | None = None) -> list[Packet]:
        """Code one frame; ``quality`` overrides the stream's for this frame (rate control),
        exactly: no :attr:`p_offsets` are added to it.

        Returns the frame's packet, or with a :attr:`pool` the packets finished
        so far, in order; ``None`` flushes (waits for every packet).
        """
        if frame is None:
            return self._finished(flush=True)
        h = self.header
        with stage("convert"):
            x = pad_to_stride(frame_to_tensor(frame, h.width, h.height, self.device))
        since_intra = self._pts % h.gop if h.gop > 0 else self._pts  # 0: this frame is intra
        intra = since_intra == 0
        if quality is not None:
            code = quality_to_code(quality)
        elif intra:
            code = self._quality_code
        else:
            offset = self.p_offsets[(since_intra - 1) % len(self.p_offsets)]
            code = quality_to_code(min(1.0, max(0.0, h.quality + offset)))
        q = torch.tensor([code_to_quality(code)], device=self.device)
        how = Refinement(self.refine, self.model.lmbda(q), h.height, h.width) if self.refine else None
        # refinement differentiates through the decoder: plain no-grad tensors, not inference ones
        with torch.no_grad() if how else torch.inference_mode(), _autocast(self.device, self.precision):
            if intra:
                coded, x_hat = self.model.intra.compress(x, q, how)
            else:
                coded, x_hat = self.model.inter.compress(x, self._ref, q, how)
        self._ref = to_reference(x_hat.float())
        ftype, pts = FrameType.I if intra else FrameType.P, self._pts
        self._pts += 1
        if self.pool is None:
            return [Packet(ftype, pts, code, tuple(s for c in coded for s in c.streams()))]
        self._coding.append((ftype, pts, code, coded, self.pool.encode_symbols(coded)))
        return self._finished(flush=False)

    def _finished(self, flush: bool) -> list[Packet]:
        """Packets whose streams are all coded, in order (all of them when flushing; the oldest
        when too many frames are in flight, so that memory stays bounded)."""
        out = []
        while self._coding and (flush or len(self._coding) > self.pool.lookahead
                                or all(f.done() for f in self._coding[0][4])):
            ftype, pts, code, coded, futures = self._coding.popleft()
            with stage("entropy"):
                y_streams = [self.pool.result(pts, f) for f in futures]
            streams = (s for c, y in zip(coded, y_streams, strict=True) for s in c.streams(y))
            out.append(Packet(ftype, pts, code, tuple(streams)))
        return out


class Decoder:
    """Decodes packets of one stream back into frames (uint8 [H, W, 3])."""

    def __init__(
        self,
        header: StreamHeader,
        *,
        model: str | VideoModel | None = None,
        device: str | torch.device = "cpu",
        max_pixels: int = MAX_PIXELS,
        precision: str = "fp32",
    ):
        if header.width * header.height > max_pixels:
            raise BitstreamError(
                f"stream frames are {header.width}x{header.height}, over this decoder's limit of "
                f"{max_pixels:,} pixels (pass max_pixels= to allow larger frames)"
            )
        self.header = header
        self.device = torch_device(device)
        _check_precision(self.device, precision)
        self.precision = precision
        self.model = _resolve_model(header.model if model is None else model, self.device)
        name, digest = model_identity(self.model)
        if digest != header.weight_hash:
            raise ModelMismatchError(
                f"stream was encoded with model {header.model!r} weights {header.weight_hash}, "
                f"but the loaded {name!r} has weights {digest}: decoding would give garbage"
            )
        self._ref: torch.Tensor | None = None
        self._padded_hw = padded_size(header.height, header.width)

    def reset(self) -> None:
        """Forget the reference frame (after a seek, decoding restarts at an I-frame)."""
        self._ref = None

    def decode(self, packet: Packet) -> np.ndarray:
        """The packet's frame as uint8 [H, W, 3] on the host."""
        frame = self.decode_tensor(packet)
        with stage("convert"):
            return frame.cpu().numpy()

    def parse_tables(self, packet: Packet) -> tuple[Pending, ...]:
        """The first half of the packet's entropy decoding: hyper-latents and table choice.

        Needs no reference frame, so packets may be parsed ahead; the second
        half, :func:`~neurocodec.entropy.decode_symbols` (the serial rANS
        work), may run in other processes (:class:`~neurocodec.parallel.EntropyPool`).
        """
        coder = self.model.intra if packet.frame_type == FrameType.I else self.model.inter
        with payload_errors(packet), torch.inference_mode():
            return coder.parse_tables(list(packet.streams), self._padded_hw)

    def decode_tensor(self, packet: Packet, parsed: tuple[Parsed, ...] | None = None) -> torch.Tensor:
        """The packet's frame as a uint8 tensor [H, W, 3] left on the decoder's device (for GPU pipelines).

        ``parsed``: the packet's parse, if already done (``Pending.complete``
        of each of :meth:`parse_tables`).
        """
        if packet.frame_type != FrameType.I and self._ref is None:
            raise BitstreamError(f"P-frame {packet.pts} has no preceding I-frame to reference")
        if parsed is None:
            with payload_errors(packet):
                parsed = tuple(p.complete() for p in self.parse_tables(packet))
        q = torch.tensor([packet.quality], device=self.device)
        with payload_errors(packet), torch.inference_mode(), _autocast(self.device, self.precision):
            if packet.frame_type == FrameType.I:
                x_hat = self.model.intra.reconstruct(parsed, q)
            else:
                x_hat = self.model.inter.reconstruct(parsed, self._ref, q)
        self._ref = to_reference(x_hat.float())
        with stage("convert"):
            return _crop_to_uint8(self._ref, self.header.width, self.header.height)


@contextmanager
def payload_errors(packet: Packet) -> Iterator[None]:
    """What the entropy decoder or the transforms raise on a corrupt payload, as a BitstreamError."""
    try:
        yield
    except (ValueError, RuntimeError, IndexError) as e:
        raise BitstreamError(f"frame {packet.pts}: entropy-coded payload is corrupt ({e})") from e


def _frames_of(source) -> tuple[Iterable[Frame], int, int, Fraction | None, int | None]:
    """(frames, width, height, fps or None, frame count or None) of an encode source."""
    if isinstance(source, (str, os.PathLike)):
        info = probe(source)
        return read_frames(source), info.width, info.height, info.fps, None
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8:
            raise InputError(f"expected uint8 frames [T, H, W, 3], got {source.dtype} {source.shape}")
        return source, source.shape[2], source.shape[1], None, source.shape[0]
    if isinstance(source, torch.Tensor):
        if source.ndim != 4 or source.shape[1] != 3 or not source.is_floating_point():
            raise InputError(f"expected float frames [T, 3, H, W], got {source.dtype} {tuple(source.shape)}")
        return source, source.shape[3], source.shape[2], None, source.shape[0]
    raise InputError(f"cannot encode a {type(source).__name__}: give a path, an array or a tensor")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A file opened for writing that appears at ``path`` only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def encode(
    source: str | os.PathLike | np.ndarray | torch.Tensor,
    output: str | os.PathLike | BinaryIO | None = None,
    *,
    model: str | VideoModel = DEFAULT_MODEL,
    quality: float = 0.5,
    gop: int = 32,
    fps: Fraction | int | float | None = None,
    max_frames: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
    entropy_workers: int = 0,
    refine: int = 0,
    p_offsets: Iterable[float] = P_OFFSETS,
) -> bytes | None:
    """Encode a whole video: a file path, uint8 [T, H, W, 3] or float [T, 3, H, W].

    Returns the stream as bytes when ``output`` is None; otherwise writes it
    to ``output`` (a path, written atomically, or a binary file object).
    ``entropy_workers``: processes that rANS-encode while the next frames go
    through the networks (:mod:`neurocodec.parallel`); the bytes are the same.
    ``refine``: Adam steps of latent refinement per frame (:mod:`neurocodec.refine`).
    ``p_offsets``: quality added to successive P-frames (:data:`P_OFFSETS`).
    """
    if entropy_workers < 0:
        raise InputError(f"entropy_workers must be >= 0, got {entropy_workers}")
    frames, width, height, src_fps, count = _frames_of(source)
    if max_frames is not None:
        frames = itertools.islice(frames, max_frames)
        count = None if count is None else min(count, max_frames)
    with ExitStack() as stack:
        pool = None
        if entropy_workers:
            from .parallel import EntropyPool  # parallel builds on this module

            pool = stack.enter_context(EntropyPool(entropy_workers))
        encoder = Encoder(width, height, model=model, quality=quality, gop=gop,
                          fps=fps or src_fps or Fraction(30), frame_count=count, device=device,
                          precision=precision, pool=pool, refine=refine, p_offsets=p_offsets)
        if output is None:
            buffer = io.BytesIO()
            _encode_into(encoder, frames, buffer, progress)
            return buffer.getvalue()
        if isinstance(output, (str, os.PathLike)):
            with atomic_output(output) as f:
                _encode_into(encoder, frames, f, progress)
        else:
            _encode_into(encoder, frames, output, progress)
    return None


def _encode_into(encoder: Encoder, frames: Iterable[Frame], f: BinaryIO,
                 progress: Callable[[int], None] | None) -> None:
    with StreamWriter(f, encoder.header) as writer:
        for frame in frames:
            for packet in encoder.encode(frame):
                writer.write(packet)
            if progress is not None:
                progress(1)
        if encoder.frames_encoded == 0:
            raise InputError("no frames to encode")
        for packet in encoder.encode(None):
            writer.write(packet)


def decode(
    source: bytes | str | os.PathLike | BinaryIO,
    *,
    model: str | VideoModel | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    entropy_workers: int = 0,
) -> np.ndarray:
    """Decode a whole stream (bytes, path or binary file) to uint8 frames [T, H, W, 3].

    ``entropy_workers``: processes that entropy-decode ahead (:mod:`neurocodec.parallel`).
    """
    from .reader import Reader  # the reader builds on this module

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Reader(source, model=model, device=device, precision=precision, entropy_workers=entropy_workers) as reader:
        frames = list(reader)
        h = reader.header
    return np.stack(frames) if frames else np.empty((0, h.height, h.width, 3), np.uint8)
