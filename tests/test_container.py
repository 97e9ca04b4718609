"""Tests of the .ncv container: round trips, index/seek, live streams and hostile bytes."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import tracemalloc
import zlib
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurocodec.container import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_PACKET_BYTES,
    FrameType,
    Packet,
    StreamHeader,
    StreamReader,
    StreamWriter,
    code_to_quality,
    quality_to_code,
    read_header,
)
from neurocodec.errors import BitstreamError, InputError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

HEADER = StreamHeader(model="ssf-test", weight_hash="0123456789abcdef", width=64, height=48,
                      fps=Fraction(30000, 1001), gop=3, quality=0.5, frame_count=None)


class NonSeekable:
    """A pipe-like reader: read() only, and short reads of at most 7 bytes."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._b.read(7 if n < 0 else min(n, 7))


def _packets(n: int = 5) -> list[Packet]:
    return [Packet(FrameType.I if i % 3 == 0 else FrameType.P, i, quality_to_code(0.25 * (i % 5)),
                   (bytes([i]) * (i + 1), b"", b"z" * i) if i % 3 == 0 else (b"m", b"mz", b"y" * 3, b"z"))
            for i in range(n)]


def _encode(
    packets: list[Packet], header: StreamHeader = HEADER, close: bool = True
) -> tuple[bytes, list[int]]:
    buf = io.BytesIO()
    w = StreamWriter(buf, header)
    offsets = [w.write(p) for p in packets]
    if close:
        w.close()
    assert w.bytes_written == len(buf.getvalue())
    return buf.getvalue(), offsets


def _file_header(js: bytes, major: int = FORMAT_MAJOR, minor: int = FORMAT_MINOR) -> bytes:
    covered = struct.pack("<BBI", major, minor, len(js)) + js
    return MAGIC + covered + struct.pack("<I", zlib.crc32(covered))


def _raw_packet(ptype: int, body: bytes) -> bytes:
    """A packet with correct framing and CRC around an arbitrary body: reaches the body parsers."""
    head = struct.pack("<BI", ptype, len(body))
    return b"NP" + head + body + struct.pack("<I", zlib.crc32(head + body))


def _read_all(f: object) -> tuple[StreamReader, list[Packet]]:
    r = StreamReader(f)  # type: ignore[arg-type]
    return r, list(r)


# --- round trips -----------------------------------------------------------------------------

def test_header_json_round_trip_and_read_header() -> None:
    assert StreamHeader.from_json_bytes(HEADER.to_json_bytes()) == HEADER
    h = dataclasses.replace(HEADER, frame_count=12, gop=-1, fps=Fraction(25), quality=1)
    assert StreamHeader.from_json_bytes(h.to_json_bytes()) == h
    assert isinstance(h.quality, float)
    data, _ = _encode([], h)
    assert read_header(data) == h


def test_packets_round_trip_with_offsets() -> None:
    pkts = _packets(7)
    data, offsets = _encode(pkts)
    r = StreamReader(io.BytesIO(data))
    assert r.header == HEADER
    assert r.header_size == offsets[0]
    got = []
    for off in offsets:
        assert r.tell() == off
        got.append(r.read_packet())
    assert got == pkts
    assert r.read_packet() is None
    assert r.read_packet() is None
    assert r.tell() == len(data)
    assert pkts[2].quality == code_to_quality(pkts[2].quality_code) == 32768 / 65535


def test_index_and_trailer() -> None:
    pkts = _packets(7)
    data, offsets = _encode(pkts)
    expected = [(p.pts, o) for p, o in zip(pkts, offsets, strict=True) if p.frame_type is FrameType.I]
    assert data.endswith(b"NCVINDEX")
    (index_off,) = struct.unpack("<Q", data[-16:-8])
    assert data[index_off:index_off + 3] == b"NPX"
    r = StreamReader(io.BytesIO(data))
    first = r.read_packet()
    pos = r.tell()
    assert r.index() == expected
    assert r.tell() == pos  # index() restores the position
    assert r.read_packet() == pkts[1]
    assert first == pkts[0]
    for pts, off in reversed(expected):
        r.seek(off)
        assert r.tell() == off
        assert r.read_packet() == pkts[pts]
    assert list(r) == pkts[expected[0][0] + 1:]  # continues from the last seek


def test_reader_not_at_file_start() -> None:
    data, offsets = _encode(_packets(4))
    f = io.BytesIO(b"junk" * 5 + data)
    f.seek(20)
    r = StreamReader(f)
    assert r.index() == [(0, offsets[0]), (3, offsets[3])]
    r.seek(offsets[3])
    assert r.read_packet() == _packets(4)[3]


def test_non_seekable_reader() -> None:
    pkts = _packets(6)
    data, _ = _encode(pkts)
    r, got = _read_all(NonSeekable(data))
    assert got == pkts
    assert r.index() is None
    with pytest.raises(BitstreamError, match="not seekable"):
        r.seek(r.header_size)


def test_live_stream_without_index() -> None:
    pkts = _packets(5)
    data, _ = _encode(pkts, close=False)
    for f in (io.BytesIO(data), NonSeekable(data)):
        r, got = _read_all(f)
        assert got == pkts
        assert r.index() is None
    buf = io.BytesIO()
    with pytest.raises(RuntimeError), StreamWriter(buf, HEADER) as w:
        w.write(pkts[0])
        raise RuntimeError("encoder died")
    assert _read_all(io.BytesIO(buf.getvalue()))[1] == pkts[:1]
    assert StreamReader(io.BytesIO(buf.getvalue())).index() is None


def test_tailing_a_growing_file() -> None:
    pkts = _packets(3)
    data, offsets = _encode(pkts, close=False)
    f = io.BytesIO(data[:offsets[1] + 5])
    r = StreamReader(f)
    assert r.read_packet() == pkts[0]
    with pytest.raises(BitstreamError, match="truncated"):
        r.read_packet()
    assert r.tell() == offsets[1]
    f.seek(0, io.SEEK_END)
    f.write(data[offsets[1] + 5:])
    f.seek(offsets[1])
    assert list(r) == pkts[1:]


def test_writer_rules() -> None:
    buf = io.BytesIO()
    w = StreamWriter(buf, dataclasses.replace(HEADER, frame_count=3))
    w.write(_packets(3)[1])
    with pytest.raises(InputError, match="strictly increase"):
        w.write(_packets(3)[0])
    with pytest.raises(InputError, match="frame_count"):
        w.write(Packet(FrameType.P, 3, 0, (b"",)))
    w.close()
    n = w.bytes_written
    w.close()
    assert w.bytes_written == n == len(buf.getvalue())
    assert not buf.closed
    with pytest.raises(InputError, match="closed"):
        w.write(Packet(FrameType.P, 2, 0, (b"",)))
    with pytest.raises(InputError):
        StreamWriter(io.BytesIO(), {"model": "x"})  # type: ignore[arg-type]


def test_quality_codes() -> None:
    assert quality_to_code(0.0) == 0
    assert quality_to_code(1) == 65535
    for c in (0, 1, 12345, 65535):
        assert quality_to_code(code_to_quality(c)) == c
    for bad in (-0.01, 1.01, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(InputError):
            quality_to_code(bad)  # type: ignore[arg-type]
    for bad_code in (-1, 65536, 0.5, False):
        with pytest.raises(InputError):
            code_to_quality(bad_code)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"frame_type": 0x58}, "frame_type"),
    ({"pts": -1}, "pts"),
    ({"pts": True}, "pts"),
    ({"quality_code": 65536}, "quality_code"),
    ({"streams": ()}, "streams"),
    ({"streams": (b"",) * 17}, "streams"),
    ({"streams": b"abc"}, "streams"),
    ({"streams": ("abc",)}, "streams"),
])
def test_packet_validation(kwargs: dict, match: str) -> None:
    args = {"frame_type": FrameType.I, "pts": 0, "quality_code": 0, "streams": (b"x",)} | kwargs
    with pytest.raises(InputError, match=match):
        Packet(**args)


def test_packet_normalises_types() -> None:
    p = Packet(0x50, 3, 7, [bytearray(b"ab"), memoryview(b"c")])  # type: ignore[arg-type]
    assert p.frame_type is FrameType.P
    assert p.streams == (b"ab", b"c")
    assert all(type(s) is bytes for s in p.streams)


# --- hostile bytes ---------------------------------------------------------------------------

def _packet_boundaries(data: bytes, offsets: list[int]) -> set[int]:
    (index_off,) = struct.unpack("<Q", data[-16:-8])
    return {*offsets, index_off, len(data) - 16, len(data)}


def test_truncation_at_every_byte() -> None:
    pkts = _packets(5)
    data, offsets = _encode(pkts)
    boundaries = _packet_boundaries(data, offsets)
    clean = 0
    for n in range(len(data) + 1):
        for f in (io.BytesIO(data[:n]), NonSeekable(data[:n])):
            try:
                r, got = _read_all(f)
            except BitstreamError:
                assert n not in boundaries or n < offsets[0]
                continue
            assert n in boundaries
            assert got == pkts[:len(got)]
            clean += 1
            if isinstance(f, io.BytesIO):
                assert (r.index() is not None) == (n == len(data))
    assert clean == 2 * len(boundaries)


def test_every_single_bit_flip_is_detected() -> None:
    pkts = _packets(4)
    data, offsets = _encode(pkts)
    expected = [(p.pts, o) for p, o in zip(pkts, offsets, strict=True) if p.frame_type is FrameType.I]
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(BitstreamError):
            _read_all(io.BytesIO(bytes(bad)))
        try:  # index() alone (no iteration): the right index, no index, or a clear error
            assert StreamReader(io.BytesIO(bytes(bad))).index() in (expected, None)
        except BitstreamError:
            pass


def test_oversized_lengths_do_not_allocate() -> None:
    head = _file_header(HEADER.to_json_bytes())
    huge_header = MAGIC + struct.pack("<BBI", 1, 0, MAX_HEADER_BYTES + 1) + b"{}" * 40
    lying_small = head + b"NP" + struct.pack("<BI", 0x49, 2**31) + b"\0" * 100
    lying_big = head + b"NP" + struct.pack("<BI", 0x49, MAX_PACKET_BYTES - 1) + b"\0" * 100
    tracemalloc.start()
    try:
        with pytest.raises(BitstreamError, match="cap"):
            StreamReader(io.BytesIO(huge_header))
        for f in (io.BytesIO(lying_small), NonSeekable(lying_small)):
            with pytest.raises(BitstreamError, match="cap"):
                _read_all(f)
        with pytest.raises(BitstreamError, match="file is shorter"):
            _read_all(io.BytesIO(lying_big))
        with pytest.raises(BitstreamError, match="truncated"):
            _read_all(NonSeekable(lying_big))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_versions() -> None:
    js = HEADER.to_json_bytes()
    with pytest.raises(BitstreamError, match=r"version 2\.0.*1\.x"):
        StreamReader(io.BytesIO(_file_header(js, major=2)))
    newer = json.loads(js) | {"future_key": {"a": [1, 2]}}
    data = _file_header(json.dumps(newer).encode(), minor=FORMAT_MINOR + 3)
    assert StreamReader(io.BytesIO(data)).header == HEADER
    with pytest.raises(BitstreamError, match="bad magic"):
        StreamReader(io.BytesIO(b"\x89NCV\n\x1a\n" + data[8:]))
    with pytest.raises(BitstreamError, match="truncated"):
        StreamReader(io.BytesIO(b""))


def test_structural_errors() -> None:
    head = _file_header(HEADER.to_json_bytes())
    p0, p1 = _packets(2)
    with pytest.raises(BitstreamError, match="does not increase"):
        _read_all(io.BytesIO(head + p1.to_bytes() + p1.to_bytes()))
    bogus_index = struct.pack("<IQQ", 1, 5, len(head))
    with pytest.raises(BitstreamError, match="disagrees"):
        _read_all(io.BytesIO(head + p0.to_bytes() + _raw_packet(0x58, bogus_index)))
    data, _ = _encode([p0, p1])
    with pytest.raises(BitstreamError, match="after the trailer"):
        _read_all(io.BytesIO(data + b"\0"))
    with pytest.raises(BitstreamError, match="add up"):
        _read_all(io.BytesIO(head + _raw_packet(0x49, struct.pack("<QHB2I", 0, 0, 2, 1, 1) + b"abc")))
    r = StreamReader(io.BytesIO(data))
    with pytest.raises(BitstreamError, match="outside"):
        r.seek(len(data) + 1)
    r.seek(r.header_size + 1)
    with pytest.raises(BitstreamError, match=f"offset {r.header_size + 1}"):
        r.read_packet()


_GOOD = json.loads(HEADER.to_json_bytes())


@pytest.mark.parametrize(("key", "value"), [
    ("model", ""), ("model", "x" * 65), ("model", 3), ("model", "a\nb"),
    ("weight_hash", "0123456"), ("weight_hash", "0123456789ABCDEF"), ("weight_hash", "g" * 8),
    ("width", 0), ("width", 16385), ("width", True), ("width", 64.0), ("height", "48"),
    ("pix_fmt", "yuv420p"), ("fps", [0, 1]), ("fps", [30, 0]), ("fps", [True, 1]), ("fps", 30),
    ("fps", [1_000_001, 1]), ("fps", [30, 1, 1]), ("gop", 0), ("gop", -2), ("gop", None),
    ("quality", 1.5), ("quality", -0.1), ("quality", "0.5"), ("quality", False), ("quality", 10**400),
    ("frame_count", -1), ("frame_count", 10**9 + 1), ("frame_count", 2.0),
])
def test_invalid_header_fields(key: str, value: object) -> None:
    with pytest.raises(BitstreamError, match=key):
        StreamHeader.from_json_bytes(json.dumps(_GOOD | {key: value}).encode())
    with pytest.raises(BitstreamError, match=key):
        StreamReader(io.BytesIO(_file_header(json.dumps(_GOOD | {key: value}).encode())))
    if key != "fps":  # fps has a different Python type (Fraction) from its JSON form
        with pytest.raises(InputError, match=key):
            dataclasses.replace(HEADER, **{key: value})


@pytest.mark.parametrize("js", [
    b"", b"[]", b"{", b"\xff{}", b'{"model": NaN}', json.dumps(_GOOD).encode()[:-1] + b',"gop":3}',
    json.dumps({k: v for k, v in _GOOD.items() if k != "width"}).encode(), b"[" * 50_000,
    json.dumps(_GOOD).encode()[:-1] + b',"quality":' + b"9" * 5000 + b"}",
])
def test_invalid_header_json(js: bytes) -> None:
    with pytest.raises(BitstreamError):
        StreamHeader.from_json_bytes(js)


def test_header_constructor_rejects_nan_and_float_fps() -> None:
    with pytest.raises(InputError, match="quality"):
        dataclasses.replace(HEADER, quality=float("nan"))
    with pytest.raises(InputError, match="fps"):
        dataclasses.replace(HEADER, fps=29.97)
    assert dataclasses.replace(HEADER, fps=25).fps == Fraction(25)


# --- fuzzing ---------------------------------------------------------------------------------

_VALID, _ = _encode(_packets(4))
_HEAD = _file_header(HEADER.to_json_bytes())


def _exercise(data: bytes) -> None:
    """Drive every reader entry point; only BitstreamError may escape."""
    for f in (io.BytesIO(data), NonSeekable(data)):
        try:
            r = StreamReader(f)
            list(r)
            for _, off in r.index() or []:
                r.seek(off)
                r.read_packet()
        except BitstreamError:
            pass


@FUZZ
@given(st.one_of(
    st.binary(max_size=300).map(lambda b: MAGIC + b),
    st.binary(max_size=300).map(lambda b: MAGIC + b"\x01\x00" + b),
    st.binary(max_size=300).map(lambda b: _HEAD + b),
    st.binary(max_size=300).map(lambda b: _HEAD + b"NP" + b),
))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _exercise(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.binary(min_size=1, max_size=8)),
                min_size=1, max_size=4),
       st.integers(0, len(_VALID)))
def test_fuzz_mutated_stream(edits: list[tuple[int, bytes]], cut: int) -> None:
    data = bytearray(_VALID)
    for pos, repl in edits:
        data[pos:pos + len(repl)] = repl
    _exercise(bytes(data[:cut]))


_BODY = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda h, lens, tail: h + struct.pack(f"<{len(lens)}I", *lens) + tail,
              st.binary(min_size=11, max_size=11), st.lists(st.integers(0, 40), max_size=17),
              st.binary(max_size=60)),
    st.builds(lambda n, entries: struct.pack("<I", n) + b"".join(struct.pack("<QQ", *e) for e in entries),
              st.integers(0, 5), st.lists(st.tuples(st.integers(0, 600), st.integers(0, 600)), max_size=5)),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([0x49, 0x50, 0x58, 0x00]), _BODY), max_size=5),
       st.binary(max_size=20))
def test_fuzz_valid_crc_bodies(packets: list[tuple[int, bytes]], tail: bytes) -> None:
    _exercise(_HEAD + b"".join(_raw_packet(t, b) for t, b in packets) + tail)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                     max_leaves=8)


@FUZZ
@given(st.dictionaries(st.sampled_from([*_GOOD, "other"]), _JSON, max_size=10), st.booleans())
def test_fuzz_header_values(overrides: dict, framed: bool) -> None:
    js = json.dumps(_GOOD | overrides).encode()
    try:
        h = StreamReader(io.BytesIO(_file_header(js))).header if framed else StreamHeader.from_json_bytes(js)
    except BitstreamError:
        return
    assert StreamHeader.from_json_bytes(h.to_json_bytes()) == h


_PACKET = st.builds(
    lambda t, q, s: (t, q, tuple(s)),
    st.sampled_from(FrameType), st.integers(0, 65535),
    st.lists(st.binary(max_size=40), min_size=1, max_size=16),
)


@FUZZ
@given(st.lists(st.tuples(st.integers(1, 2**40), _PACKET), max_size=12), st.booleans(), st.booleans())
def test_fuzz_round_trip(specs: list, close: bool, seekable: bool) -> None:
    pts, pkts = -1, []
    for step, (t, q, s) in specs:
        pts += step
        pkts.append(Packet(t, pts, q, s))
    data, offsets = _encode(pkts, close=close)
    r, got = _read_all(io.BytesIO(data) if seekable else NonSeekable(data))
    assert got == pkts
    expected = [(p.pts, o) for p, o in zip(pkts, offsets, strict=True) if p.frame_type is FrameType.I]
    assert r.index() == (expected if close and seekable else None)
