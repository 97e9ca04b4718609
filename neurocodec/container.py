"""The ``.ncv`` container: neurocodec's versioned, seekable bitstream format.

The container knows nothing about neural networks; frame packets carry opaque
entropy-coded byte strings whose meaning is the model's business.  All integers
are little-endian.  Layout (full spec in ``docs/bitstream.md``)::

    file header  MAGIC(8) major u8, minor u8, header_len u32, JSON, crc32 u32
                 (crc over major..end of JSON)
    packet*      b"NP" type u8, body_len u32, body, crc32 u32 (over type..body)
                 type 'I'/'P': pts u64, quality_code u16, n u8, n x len u32, streams
    index?       a packet of type 'X': count u32, count x (pts u64, offset u64)
    trailer?     index packet offset u64, b"NCVINDEX"

A live stream is just header + packets: readers stop at a clean EOF on a packet
boundary.  Seeking uses trailer -> index packet -> I-frame offset.  Every byte
is untrusted: parsing raises only ``BitstreamError``, caps every allocation and
reads bodies in chunks, so a lying length cannot reserve memory before EOF.
"""

from __future__ import annotations

import enum
import io
import json
import numbers
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType
from typing import Any, BinaryIO, Self

from neurocodec.errors import BitstreamError, InputError

__all__ = [
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "MAX_PACKET_BYTES",
    "FrameType",
    "Packet",
    "StreamHeader",
    "StreamReader",
    "StreamWriter",
    "code_to_quality",
    "quality_to_code",
    "read_header",
]

FORMAT_MAJOR = 1
FORMAT_MINOR = 0
MAGIC = b"\x89NCV\r\n\x1a\n"  # PNG-style: detects 7-bit and CRLF/LF text-mode mangling
MAX_HEADER_BYTES = 64 * 1024
MAX_PACKET_BYTES = 1 << 28
_MAX_STREAMS = 16
_SYNC = b"NP"
_INDEX_TYPE = 0x58  # 'X'
_TRAILER_MAGIC = b"NCVINDEX"
_TRAILER_SIZE = 16
_CHUNK = 1 << 20
_PKT_HEAD = struct.Struct("<BI")  # type, body_len (follows the sync bytes)
_FRAME_HEAD = struct.Struct("<QHB")  # pts, quality_code, n_streams
_MAX_DIM = 16384
_MAX_COUNT = 10**9
_MAX_FPS_TERM = 1_000_000
_HEX = re.compile(r"[0-9a-f]{8,64}")


class FrameType(enum.IntEnum):
    """Frame packet type byte; the values are the ASCII letters, readable in a hex dump."""

    I = 0x49
    P = 0x50


def _show(v: object) -> str:
    """A short repr for error messages (repr of a huge int raises ValueError)."""
    try:
        r = repr(v)
    except ValueError:
        return f"a huge {type(v).__name__}"
    return r if len(r) <= 60 else r[:57] + "..."


def _unit_float(name: str, q: Any) -> float:
    # Compare before any float(): NaN fails the comparison and huge ints cannot overflow.
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 <= q <= 1:
        raise InputError(f"{name} must be a finite number in [0, 1], got {_show(q)}")
    return float(q)


def quality_to_code(q: float) -> int:
    """Quantize a quality in [0, 1] to the u16 stored in packets (encoder and decoder share it)."""
    return round(_unit_float("quality", q) * 65535)


def code_to_quality(c: int) -> float:
    """Inverse of `quality_to_code`."""
    if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c <= 65535:
        raise InputError(f"quality code must be an int in [0, 65535], got {_show(c)}")
    return int(c) / 65535


def _int_field(name: str, v: Any, lo: int, hi: int, *, extra: tuple[int, ...] = ()) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise InputError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if not (lo <= v <= hi or v in extra):
        allowed = " or ".join([f"{lo}..{hi}", *map(str, extra)])
        raise InputError(f"{name} must be {allowed}, got {_show(v)}")
    return v


@dataclass(frozen=True)
class StreamHeader:
    """Per-stream metadata: enough to pick the model and allocate output before any frame."""

    model: str
    weight_hash: str
    width: int
    height: int
    fps: Fraction
    gop: int
    quality: float
    pix_fmt: str = "rgb24"
    frame_count: int | None = None

    def __post_init__(self) -> None:
        # Validate (and normalise numeric types) so an invalid header can never be written.
        if not isinstance(self.model, str) or not 1 <= len(self.model) <= 64 or not self.model.isprintable():
            raise InputError(f"model must be a printable str of 1..64 chars, got {_show(self.model)}")
        if not isinstance(self.weight_hash, str) or not _HEX.fullmatch(self.weight_hash):
            raise InputError(f"weight_hash must be 8..64 lowercase hex chars, got {_show(self.weight_hash)}")
        set_ = object.__setattr__
        set_(self, "width", _int_field("width", self.width, 1, _MAX_DIM))
        set_(self, "height", _int_field("height", self.height, 1, _MAX_DIM))
        if self.pix_fmt != "rgb24":
            raise InputError(f"pix_fmt must be 'rgb24', got {_show(self.pix_fmt)}")
        fps = self.fps
        if isinstance(fps, numbers.Integral) and not isinstance(fps, bool):
            fps = Fraction(int(fps))
        if not isinstance(fps, Fraction) or not (
            0 < fps.numerator <= _MAX_FPS_TERM and fps.denominator <= _MAX_FPS_TERM
        ):
            raise InputError(f"fps must be a positive Fraction with terms <= {_MAX_FPS_TERM}, "
                             f"got {_show(fps)}")
        set_(self, "fps", fps)
        set_(self, "gop", _int_field("gop", self.gop, 1, _MAX_COUNT, extra=(-1,)))
        set_(self, "quality", _unit_float("quality", self.quality))
        if self.frame_count is not None:
            set_(self, "frame_count", _int_field("frame_count", self.frame_count, 0, _MAX_COUNT))

    def to_json_bytes(self) -> bytes:
        """Canonical UTF-8 JSON of the header (fps as [num, den])."""
        d = {"model": self.model, "weight_hash": self.weight_hash, "width": self.width,
             "height": self.height, "pix_fmt": self.pix_fmt,
             "fps": [self.fps.numerator, self.fps.denominator], "gop": self.gop,
             "quality": self.quality, "frame_count": self.frame_count}
        return json.dumps(d, separators=(",", ":"), allow_nan=False).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, b: bytes) -> StreamHeader:
        """Parse and validate; unknown keys are ignored (a newer minor version may add some)."""
        def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            d = dict(pairs)
            if len(d) != len(pairs):
                raise BitstreamError("stream header: duplicate JSON key")
            return d

        def no_constant(name: str) -> None:
            raise BitstreamError(f"stream header: {name} is not valid JSON")

        try:
            d = json.loads(bytes(b).decode("utf-8"), object_pairs_hook=no_dupes, parse_constant=no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise BitstreamError(f"stream header is not valid UTF-8 JSON: {e}") from None
        if not isinstance(d, dict):
            raise BitstreamError("stream header must be a JSON object")
        required = ("model", "weight_hash", "width", "height", "fps", "gop", "quality")
        missing = [k for k in required if k not in d]
        if missing:
            raise BitstreamError(f"stream header lacks field(s): {', '.join(missing)}")
        fps = d["fps"]
        if not (isinstance(fps, list) and len(fps) == 2 and all(
                type(t) is int and 0 < t <= _MAX_FPS_TERM for t in fps)):
            raise BitstreamError(f"stream header: fps must be [num, den] of ints in 1..{_MAX_FPS_TERM}")
        try:
            return cls(model=d["model"], weight_hash=d["weight_hash"], width=d["width"], height=d["height"],
                       fps=Fraction(fps[0], fps[1]), gop=d["gop"], quality=d["quality"],
                       pix_fmt=d.get("pix_fmt", "rgb24"), frame_count=d.get("frame_count"))
        except InputError as e:
            raise BitstreamError(f"stream header: {e}") from None


@dataclass(frozen=True)
class Packet:
    """One coded frame: its type, frame number, quantized quality and opaque coded streams."""

    frame_type: FrameType
    pts: int
    quality_code: int
    streams: tuple[bytes, ...]

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "frame_type", FrameType(self.frame_type))
        except ValueError:
            raise InputError(f"frame_type must be a FrameType, got {_show(self.frame_type)}") from None
        object.__setattr__(self, "pts", _int_field("pts", self.pts, 0, 2**64 - 1))
        object.__setattr__(self, "quality_code", _int_field("quality_code", self.quality_code, 0, 65535))
        bytes_like = (bytes, bytearray, memoryview)
        if isinstance(self.streams, (*bytes_like, str)) or not hasattr(self.streams, "__iter__"):
            raise InputError("streams must be a sequence of bytes objects")
        streams = tuple(self.streams)
        if not all(isinstance(s, bytes_like) for s in streams):
            raise InputError("streams must be a sequence of bytes objects")
        streams = tuple(bytes(s) for s in streams)
        if not 1 <= len(streams) <= _MAX_STREAMS:
            raise InputError(f"a packet carries 1..{_MAX_STREAMS} streams, got {len(streams)}")
        if self._body_len(streams) > MAX_PACKET_BYTES:
            raise InputError(f"packet body exceeds MAX_PACKET_BYTES ({MAX_PACKET_BYTES})")
        object.__setattr__(self, "streams", streams)

    @staticmethod
    def _body_len(streams: tuple[bytes, ...]) -> int:
        return _FRAME_HEAD.size + 4 * len(streams) + sum(map(len, streams))

    @property
    def quality(self) -> float:
        """The dequantized quality: the exact value the encoder used."""
        return code_to_quality(self.quality_code)

    def to_bytes(self) -> bytes:
        """The full wire packet, sync bytes and CRC included."""
        n = len(self.streams)
        body = b"".join([_FRAME_HEAD.pack(self.pts, self.quality_code, n),
                         struct.pack(f"<{n}I", *map(len, self.streams)), *self.streams])
        return _frame(int(self.frame_type), body)


def _frame(ptype: int, body: bytes) -> bytes:
    head = _PKT_HEAD.pack(ptype, len(body))
    return b"".join([_SYNC, head, body, struct.pack("<I", zlib.crc32(body, zlib.crc32(head)))])


def _write_all(f: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        if n is None or n >= len(view):  # None: file-likes that do not report a count
            return
        view = view[n:]


class StreamWriter:
    """Writes a stream to any object with .write(bytes); never seeks or tells (works on pipes, sockets)."""

    def __init__(self, fileobj: BinaryIO, header: StreamHeader) -> None:
        if not isinstance(header, StreamHeader):
            raise InputError("header must be a StreamHeader")
        self._f, self.header = fileobj, header
        self._pos = 0
        self._index: list[tuple[int, int]] = []
        self._last_pts: int | None = None
        self._closed = False
        js = header.to_json_bytes()
        covered = struct.pack("<BBI", FORMAT_MAJOR, FORMAT_MINOR, len(js)) + js
        self._emit(MAGIC + covered + struct.pack("<I", zlib.crc32(covered)))

    @property
    def bytes_written(self) -> int:
        """Bytes emitted so far, i.e. the offset the next packet will get."""
        return self._pos

    def _emit(self, data: bytes) -> None:
        try:
            _write_all(self._f, data)
        except BaseException:
            self._closed = True  # offsets would be unknowable after a partial write
            raise
        self._pos += len(data)

    def write(self, packet: Packet) -> int:
        """Append a frame packet; returns its byte offset (remembered for the index if an I-frame)."""
        if self._closed:
            raise InputError("StreamWriter is closed")
        if not isinstance(packet, Packet):
            raise InputError("write() takes a Packet")
        if self._last_pts is not None and packet.pts <= self._last_pts:
            raise InputError(f"pts must strictly increase: {packet.pts} after {self._last_pts}")
        fc = self.header.frame_count
        if fc is not None and packet.pts >= fc:
            raise InputError(f"pts {packet.pts} is beyond the header's frame_count {fc}")
        offset = self._pos
        self._emit(packet.to_bytes())
        self._last_pts = packet.pts
        if packet.frame_type is FrameType.I:
            self._index.append((packet.pts, offset))
        return offset

    def close(self) -> None:
        """Write the index packet and trailer (once); the file object stays open."""
        if self._closed:
            return
        body = struct.pack("<I", len(self._index)) + b"".join(struct.pack("<QQ", *e) for e in self._index)
        offset = self._pos
        self._emit(_frame(_INDEX_TYPE, body) + struct.pack("<Q", offset) + _TRAILER_MAGIC)
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True  # leave a readable live-style stream, without an index


class StreamReader:
    """Reads a stream from a binary file object (seekable or not)."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self._seekable = False
        try:
            if fileobj.seekable():
                self._base = fileobj.tell()
                self._seekable = True
        except (AttributeError, OSError, ValueError):
            pass
        self._pos = 0
        self._reset_tracking()
        self._contiguous = True
        self._seen_i: list[tuple[int, int]] = []
        self._index_cache: list[tuple[int, int]] | None = None
        magic = self._read_exact(len(MAGIC), "file header")
        if magic != MAGIC:
            hint = " (mangled by a text-mode transfer?)" if magic[1:4] == b"NCV" else ""
            raise BitstreamError(f"not an .ncv stream: bad magic{hint}")
        major, minor, hlen = struct.unpack("<BBI", self._read_exact(6, "file header"))
        if major != FORMAT_MAJOR:
            raise BitstreamError(f"unsupported .ncv format version {major}.{minor}; this build reads "
                                 f"version {FORMAT_MAJOR}.x (written as {FORMAT_MAJOR}.{FORMAT_MINOR})")
        if hlen > MAX_HEADER_BYTES:
            raise BitstreamError(f"stream header of {hlen} bytes exceeds the {MAX_HEADER_BYTES}-byte cap")
        js = self._read_exact(hlen, "stream header")
        (crc,) = struct.unpack("<I", self._read_exact(4, "stream header CRC"))
        if zlib.crc32(js, zlib.crc32(struct.pack("<BBI", major, minor, hlen))) != crc:
            raise BitstreamError("stream header CRC mismatch (corrupt file header)")
        self.header = StreamHeader.from_json_bytes(js)
        self.header_size = self._pos

    def _reset_tracking(self) -> None:
        self._last_pts: int | None = None
        self._done = False

    def _read_exact(self, n: int, what: str) -> bytes:
        """Read n bytes in chunks, so a lying length meets EOF before a big allocation."""
        chunks, got = [], 0
        while got < n:
            chunk = self._f.read(min(n - got, _CHUNK))
            if not chunk:
                raise BitstreamError(f"truncated {what} at offset {self._pos + got}")
            chunks.append(chunk)
            got += len(chunk)
        self._pos += n
        return b"".join(chunks)

    def _size(self) -> int:
        """Stream size now (files being written can grow); seekable files only."""
        cur = self._f.tell()
        try:
            return self._f.seek(0, io.SEEK_END) - self._base
        finally:
            self._f.seek(cur)

    def _read_upto(self, n: int) -> bytes:
        """Read up to n (small) bytes, fewer only at EOF; raw pipes may return short reads."""
        data = b""
        while len(data) < n and (chunk := self._f.read(n - len(data))):
            data += chunk
        self._pos += len(data)
        return data

    def _read_raw(self) -> tuple[int, bytes, int] | None:
        """Next (type, body, offset), or None at a clean EOF."""
        start = self._pos
        sync = self._read_upto(2)
        if not sync:
            return None
        if len(sync) < 2:
            raise BitstreamError(f"truncated packet at offset {start}")
        if sync != _SYNC:
            raise BitstreamError(f"bad packet sync bytes {sync!r} at offset {start}")
        head = self._read_exact(_PKT_HEAD.size, "packet header")
        ptype, blen = _PKT_HEAD.unpack(head)
        if ptype not in (FrameType.I, FrameType.P, _INDEX_TYPE):
            raise BitstreamError(f"unknown packet type 0x{ptype:02x} at offset {start}")
        if blen > MAX_PACKET_BYTES:
            raise BitstreamError(f"packet at offset {start} claims {blen} bytes (cap {MAX_PACKET_BYTES})")
        if self._seekable and blen + 4 > self._size() - self._pos:
            raise BitstreamError(f"truncated packet at offset {start}: claims {blen} bytes, file is shorter")
        body = self._read_exact(blen, "packet body")
        (crc,) = struct.unpack("<I", self._read_exact(4, "packet CRC"))
        if zlib.crc32(body, zlib.crc32(head)) != crc:
            raise BitstreamError(f"packet CRC mismatch at offset {start}")
        return ptype, body, start

    def read_packet(self) -> Packet | None:
        """Next frame packet; None at clean EOF or at the index packet (whose trailer is then checked)."""
        if self._done:
            return None
        start = self._pos
        try:
            raw = self._read_raw()
            if raw is None:
                return None
            ptype, body, offset = raw
            if ptype == _INDEX_TYPE:
                self._finish(body, offset)
                return None
            pkt = _parse_frame(ptype, body, offset)
            if self._last_pts is not None and pkt.pts <= self._last_pts:
                raise BitstreamError(f"pts {pkt.pts} at offset {offset} does not increase "
                                     f"(previous {self._last_pts})")
            fc = self.header.frame_count
            if fc is not None and pkt.pts >= fc:
                raise BitstreamError(f"pts {pkt.pts} at offset {offset} exceeds frame_count {fc}")
        except BitstreamError:
            # tell() keeps pointing at the failed packet; on a seekable file so does the file,
            # so a reader tailing a file that is still being written can simply retry.
            self._pos = start
            if self._seekable:
                self._f.seek(self._base + start)
            raise
        self._last_pts = pkt.pts
        if self._contiguous and pkt.frame_type is FrameType.I:
            self._seen_i.append((pkt.pts, offset))
        return pkt

    def _finish(self, body: bytes, offset: int) -> None:
        entries = self._parse_index(body, offset)
        if self._contiguous and entries != self._seen_i:
            raise BitstreamError(f"index packet at offset {offset} disagrees with the I-frames in the stream")
        trailer = self._read_upto(_TRAILER_SIZE)
        if trailer:  # the trailer is optional; if present it must be whole, correct and last
            if len(trailer) < _TRAILER_SIZE:
                raise BitstreamError(f"truncated trailer at offset {self._pos - len(trailer)}")
            if trailer[8:] != _TRAILER_MAGIC or struct.unpack("<Q", trailer[:8])[0] != offset:
                raise BitstreamError(f"corrupt trailer at offset {self._pos - _TRAILER_SIZE}")
            if self._f.read(1):
                raise BitstreamError(f"unexpected data after the trailer at offset {self._pos}")
        self._done = True

    def _parse_index(self, body: bytes, offset: int) -> list[tuple[int, int]]:
        if len(body) < 4 or len(body) != 4 + 16 * struct.unpack_from("<I", body)[0]:
            raise BitstreamError(f"malformed index packet at offset {offset}")
        entries = list(struct.iter_unpack("<QQ", body[4:]))
        prev_pts = prev_off = -1
        for pts, off in entries:
            if pts <= prev_pts or off <= prev_off or not self.header_size <= off < offset:
                raise BitstreamError(f"index packet at offset {offset} has an out-of-order or "
                                     f"out-of-range entry (pts {pts}, offset {off})")
            prev_pts, prev_off = pts, off
        return entries

    def __iter__(self) -> Iterator[Packet]:
        while (pkt := self.read_packet()) is not None:
            yield pkt

    def index(self) -> list[tuple[int, int]] | None:
        """(pts, offset) of I-frames from trailer + index; None if not seekable or there is no trailer."""
        if not self._seekable:
            return None
        if self._index_cache is not None:
            return list(self._index_cache)
        saved, saved_done = self._pos, self._done
        try:
            size = self._size()
            if size < self.header_size + _TRAILER_SIZE:
                return None
            self._f.seek(self._base + size - _TRAILER_SIZE)
            trailer = self._f.read(_TRAILER_SIZE)
            if len(trailer) != _TRAILER_SIZE or trailer[8:] != _TRAILER_MAGIC:
                return None  # live or truncated stream
            (off,) = struct.unpack("<Q", trailer[:8])
            if not self.header_size <= off <= size - _TRAILER_SIZE:
                raise BitstreamError(f"trailer points outside the stream (offset {off})")
            self._f.seek(self._base + off)
            self._pos = off
            raw = self._read_raw()
            if raw is None or raw[0] != _INDEX_TYPE or self._pos != size - _TRAILER_SIZE:
                raise BitstreamError(f"trailer does not point at an index packet (offset {off})")
            entries = self._parse_index(raw[1], off)
        finally:
            self._f.seek(self._base + saved)
            self._pos, self._done = saved, saved_done
        self._index_cache = entries
        return list(entries)

    def seek(self, offset: int) -> None:
        """Position at a packet offset (e.g. from index()); seekable files only."""
        if not self._seekable:
            raise BitstreamError("cannot seek: the input is not seekable")
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
            raise InputError("offset must be an int")
        if not self.header_size <= offset <= self._size():
            raise BitstreamError(f"seek offset {offset} is outside the packet area")
        self._f.seek(self._base + int(offset))
        self._pos = int(offset)
        self._reset_tracking()
        self._contiguous = False

    def tell(self) -> int:
        """Offset (from the stream start) of the next packet."""
        return self._pos


def _parse_frame(ptype: int, body: bytes, offset: int) -> Packet:
    if len(body) < _FRAME_HEAD.size:
        raise BitstreamError(f"frame packet at offset {offset} is too short")
    pts, qcode, n = _FRAME_HEAD.unpack_from(body)
    lens_end = _FRAME_HEAD.size + 4 * n
    if not 1 <= n <= _MAX_STREAMS or len(body) < lens_end:
        raise BitstreamError(f"frame packet at offset {offset} has a bad stream count {n}")
    lens = struct.unpack_from(f"<{n}I", body, _FRAME_HEAD.size)
    if lens_end + sum(lens) != len(body):
        raise BitstreamError(f"frame packet at offset {offset}: stream lengths do not add up to the body")
    streams, pos = [], lens_end
    for ln in lens:
        streams.append(body[pos:pos + ln])
        pos += ln
    return Packet(FrameType(ptype), pts, qcode, tuple(streams))


def read_header(data: bytes) -> StreamHeader:
    """Parse just the file header at the start of `data`."""
    return StreamReader(io.BytesIO(data)).header
