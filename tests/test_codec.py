"""The codec as a user sees it: round trips, bit-exactness, streaming, seeking, bad input."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import neurocodec
from neurocodec import BitstreamError, FrameType, InputError, ModelMismatchError, Packet
from neurocodec.container import MAGIC, StreamReader, StreamWriter, code_to_quality, quality_to_code
from neurocodec.models.layers import cat_channels
from neurocodec.parallel import EntropyPool
from neurocodec.synthetic import moving_pattern
from neurocodec.zoo import load_model

from .conftest import DATA


@pytest.mark.parametrize("size", [(33, 17), (64, 64), (130, 70), (1, 1)])
@pytest.mark.parametrize("quality", [0.0, 0.55, 1.0])
def test_round_trip_is_bit_exact(tiny_model, size, quality):
    w, h = size
    frames = moving_pattern(w, h, 4, seed=w)
    enc = neurocodec.Encoder(w, h, model=tiny_model, quality=quality, gop=3)
    stream = io.BytesIO()
    reconstructions = []
    with StreamWriter(stream, enc.header) as writer:
        for frame in frames:
            for packet in enc.encode(frame):
                writer.write(packet)
            reconstructions.append(enc.reconstruction)
    decoded = neurocodec.decode(stream.getvalue(), model=tiny_model)
    assert decoded.shape == (4, h, w, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, np.stack(reconstructions))


def test_streaming_and_whole_video_give_identical_bytes(tiny_model, clip):
    whole = neurocodec.encode(clip, model=tiny_model, quality=0.4, gop=4)
    enc = neurocodec.Encoder(clip.shape[2], clip.shape[1], model=tiny_model, quality=0.4, gop=4,
                             frame_count=len(clip))
    stream = io.BytesIO()
    with StreamWriter(stream, enc.header) as writer:
        for frame in clip:
            for packet in enc.encode(frame):
                writer.write(packet)
        assert enc.encode(None) == []  # flush: low-delay coding holds nothing back
    assert stream.getvalue() == whole


def test_tensor_frames_code_like_uint8_frames(tiny_model, clip):
    tensors = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    assert neurocodec.encode(tensors, model=tiny_model) == neurocodec.encode(clip, model=tiny_model)


@pytest.mark.parametrize("amp", [False, True])
def test_cat_channels_feeds_a_convolution_what_it_would_compute_on(amp):
    """The P-frame fusion's concatenation is laid out for its convolution, with unchanged results."""
    conv = torch.nn.Conv2d(19, 8, 3, padding=1).to(memory_format=torch.channels_last)
    feat = torch.rand(1, 16, 24, 40).to(memory_format=torch.channels_last)
    image = torch.rand(1, 3, 24, 40)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        feat = feat.to(torch.bfloat16) if amp else feat
        x = cat_channels([feat, image], conv)
        assert x.dtype == (torch.bfloat16 if amp else torch.float32)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(conv(x), conv(torch.cat([feat, image], dim=1)))


def test_golden_stream():
    """A fixed model and input give a fixed stream; the stored stream decodes to fixed frames."""
    from .make_golden import GOLDEN_OPTIONS, golden_clip

    golden = json.loads((DATA / "golden.json").read_text())
    model = load_model(DATA / "tiny.safetensors")
    data = neurocodec.encode(golden_clip(), model=model, **GOLDEN_OPTIONS)
    assert hashlib.sha256(data).hexdigest() == golden["stream_sha256"]
    frames = neurocodec.decode(DATA / "golden.ncv", model=model)
    assert hashlib.sha256(frames.tobytes()).hexdigest() == golden["frames_sha256"]


def test_gop_sets_frame_types(tiny_model, clip):
    def types(gop):
        reader = StreamReader(io.BytesIO(neurocodec.encode(clip, model=tiny_model, gop=gop)))
        return "".join(p.frame_type.name for p in reader)

    assert types(4) == "IPPPIP"
    assert types(1) == "IIIIII"
    assert types(-1) == "IPPPPP"


def test_header_records_the_stream(tiny_model, clip):
    data = neurocodec.encode(clip, model=tiny_model, quality=0.25, gop=5, fps=25)
    h = StreamReader(io.BytesIO(data)).header
    assert (h.width, h.height, h.gop, h.frame_count, h.fps) == (72, 40, 5, 6, 25)
    assert h.quality == pytest.approx(0.25, abs=1e-4)
    assert h.weight_hash == tiny_model.weight_hash


def test_per_frame_quality_override(tiny_model, clip):
    enc = neurocodec.Encoder(72, 40, model=tiny_model, quality=0.5)
    low = enc.encode(clip[0], quality=0.0)[0]
    assert low.quality == 0.0
    dec = neurocodec.Decoder(enc.header, model=tiny_model)
    np.testing.assert_array_equal(dec.decode(low), enc.reconstruction)


def test_p_frames_follow_the_offset_pattern(tiny_model, clip):
    """Offsets cycle over the P-frames, restart after each I-frame, clamp to [0, 1], and decode exactly."""
    data = neurocodec.encode(clip, model=tiny_model, quality=0.9, gop=4, p_offsets=(-0.3, 0.2))
    packets = list(StreamReader(io.BytesIO(data)))
    assert [(p.frame_type.name, round(p.quality, 3)) for p in packets] == [
        ("I", 0.9), ("P", 0.6), ("P", 1.0), ("P", 0.6), ("I", 0.9), ("P", 0.6)]
    dec = neurocodec.Decoder(StreamReader(io.BytesIO(data)).header, model=tiny_model)
    enc = neurocodec.Encoder(72, 40, model=tiny_model, quality=0.9, gop=4, p_offsets=(-0.3, 0.2))
    for frame, packet in zip(clip, packets, strict=True):
        assert enc.encode(frame) == [packet]
        np.testing.assert_array_equal(dec.decode(packet), enc.reconstruction)
    flat = neurocodec.encode(clip, model=tiny_model, quality=0.9, gop=4, p_offsets=(0,))
    assert {p.quality for p in StreamReader(io.BytesIO(flat))} == {code_to_quality(quality_to_code(0.9))}


@pytest.mark.parametrize("offsets", [(), (0.1, float("nan")), (1.5,), ("a",), (0.0,) * 65])
def test_bad_offsets_are_input_errors(tiny_model, offsets):
    with pytest.raises(InputError, match="offsets"):
        neurocodec.Encoder(72, 40, model=tiny_model, p_offsets=offsets)


def test_starter_model_trades_rate_for_quality():
    """The shipped model: more quality, more bytes and higher PSNR."""
    from neurocodec.metrics import psnr
    from neurocodec.synthetic import demo_clip

    clip = demo_clip(192, 128, 3)
    results = []
    for q in (0.0, 1.0):
        data = neurocodec.encode(clip, quality=q)
        decoded = neurocodec.decode(data)
        results.append((len(data), np.mean([psnr(a, b) for a, b in zip(clip, decoded, strict=True)])))
    (small, low_psnr), (big, high_psnr) = results
    assert big > 1.5 * small and high_psnr > low_psnr + 0.5


def test_reader_seeks_to_every_frame(tiny_model, clip, tmp_path):
    path = tmp_path / "clip.ncv"
    neurocodec.encode(clip, path, model=tiny_model, gop=3)
    reference = neurocodec.decode(path, model=tiny_model)
    with neurocodec.open(path, model=tiny_model) as reader:
        assert len(reader) == len(clip)
        assert [pts for pts, _ in reader.index()] == [0, 3]
        for n in reversed(range(len(clip))):
            reader.seek(n)
            assert reader.tell() == n
            np.testing.assert_array_equal(reader.read(), reference[n])
        with pytest.raises(InputError):
            reader.seek(len(clip) + 5)


def test_entropy_workers_code_the_same_bytes_and_frames(tiny_model, clip, tmp_path):
    """rANS coding in worker processes gives the serial coder's bytes and frames, and an
    iteration stopped early leaves the reader at the next unread frame, not at the parsed-ahead ones."""
    path = tmp_path / "clip.ncv"
    neurocodec.encode(clip, path, model=tiny_model, gop=3)
    assert neurocodec.encode(clip, model=tiny_model, gop=3, entropy_workers=2) == path.read_bytes()
    serial = neurocodec.Encoder(72, 40, model=tiny_model, gop=3)
    with EntropyPool(workers=1) as pool:
        pooled = neurocodec.Encoder(72, 40, model=tiny_model, gop=3, pool=pool)
        packets = [p for frame in clip for p in pooled.encode(frame)]  # the finished ones, in order
        packets += pooled.encode(None)
    assert packets == [serial.encode(frame)[0] for frame in clip]
    reference = neurocodec.decode(path, model=tiny_model)
    np.testing.assert_array_equal(neurocodec.decode(path, model=tiny_model, entropy_workers=2), reference)
    with neurocodec.open(path, model=tiny_model, entropy_workers=1) as reader:
        frames = iter(reader)
        next(frames), next(frames)
        frames.close()
        assert reader.tell() == 2
        np.testing.assert_array_equal(reader.read(), reference[2])
        np.testing.assert_array_equal(np.stack(list(reader)), reference[3:])
        assert reader.tell() == len(clip)


def test_entropy_worker_errors_reach_the_caller(tiny_model, clip):
    data = neurocodec.encode(clip[:2], model=tiny_model, gop=-1)
    reader = StreamReader(io.BytesIO(data))
    packets = list(reader)
    bad = Packet(FrameType.P, 1, packets[1].quality_code, packets[1].streams[:3])  # a stream missing
    decoder = neurocodec.Decoder(reader.header, model=tiny_model)
    with EntropyPool(workers=1) as pool:
        frames = pool.decode(decoder, [packets[0], bad])
        assert next(frames).shape == (40, 72, 3)
        with pytest.raises(BitstreamError, match="2 coded streams"):
            next(frames)
    with pytest.raises(InputError, match="no more work"):
        list(pool.decode(decoder, packets))  # the pool is closed
    with pytest.raises(InputError):
        EntropyPool(workers=0)


def test_live_stream_without_index_reads_and_seeks(tiny_model, clip):
    stream = io.BytesIO()
    enc = neurocodec.Encoder(72, 40, model=tiny_model, gop=2)
    writer = StreamWriter(stream, enc.header)  # never closed: no index, no trailer
    for frame in clip:
        writer.write(enc.encode(frame)[0])
    stream.seek(0)
    with neurocodec.open(stream, model=tiny_model) as reader:
        assert reader.header.frame_count is None
        assert len(reader) == len(clip)
        reader.seek(5)
        np.testing.assert_array_equal(reader.read(), enc.reconstruction)
        assert reader.read() is None


def test_encode_from_a_video_file(tiny_model, clip, tmp_path):
    from neurocodec.io import write_video

    src = tmp_path / "in.mkv"
    write_video(src, clip, fps=24)
    out = tmp_path / "out.ncv"
    assert neurocodec.encode(src, out, model=tiny_model, max_frames=4) is None
    with neurocodec.open(out, model=tiny_model) as reader:
        assert reader.header.fps == 24 and len(reader) == 4
        assert len(list(reader)) == 4


def test_wrong_weights_refuse_to_decode(tiny_model, clip):
    data = neurocodec.encode(clip[:2], model=tiny_model)
    other = load_model(DATA / "tiny.safetensors")
    with torch.no_grad():
        other.intra.g_s[0].bias.add_(0.01)
    other.weight_hash = None  # recomputed from the changed weights
    with pytest.raises(ModelMismatchError, match="weights"):
        neurocodec.decode(data, model=other)


def test_unknown_model_name_is_a_clear_error(clip):
    with pytest.raises(ModelMismatchError, match="unknown model"):
        neurocodec.encode(clip, model="no-such-model")


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((40, 72, 3), np.float32),
        np.zeros((40, 72), np.uint8),
        np.zeros((41, 72, 3), np.uint8),
        torch.zeros(3, 40, 72, dtype=torch.uint8),
        torch.full((3, 40, 72), float("nan")),
        "not a frame",
    ],
)
def test_bad_frames_are_input_errors(tiny_model, frame):
    enc = neurocodec.Encoder(72, 40, model=tiny_model)
    with pytest.raises(InputError):
        enc.encode(frame)


def test_empty_input_writes_no_file(tiny_model, tmp_path):
    out = tmp_path / "empty.ncv"
    with pytest.raises(InputError):
        neurocodec.encode(np.zeros((0, 8, 8, 3), np.uint8), out, model=tiny_model)
    assert list(tmp_path.iterdir()) == []


def test_p_frame_without_i_frame_is_rejected(tiny_model, clip):
    packets = list(StreamReader(io.BytesIO(neurocodec.encode(clip, model=tiny_model, gop=-1))))
    dec = neurocodec.Decoder(StreamReader(io.BytesIO(neurocodec.encode(clip, model=tiny_model))).header,
                             model=tiny_model)
    assert packets[1].frame_type == FrameType.P
    with pytest.raises(BitstreamError, match="no preceding I-frame"):
        dec.decode(packets[1])


def _refresh_crcs(data: bytes) -> bytes:
    """Recompute every packet CRC so that corruption reaches the entropy decoder."""
    out = bytearray(data)
    pos = len(MAGIC) + 2
    (header_len,) = struct.unpack_from("<I", out, pos)
    pos += 4 + header_len + 4
    while pos + 7 <= len(out) and out[pos:pos + 2] == b"NP":
        (body_len,) = struct.unpack_from("<I", out, pos + 3)
        end = pos + 7 + body_len
        if end + 4 > len(out):
            break
        struct.pack_into("<I", out, end, zlib.crc32(bytes(out[pos + 2:end])))
        pos = end + 4
    return bytes(out)


def _corrupted(data: bytes, count: int, seed: int) -> Iterator[bytes]:
    """``count`` copies of a stream with 4 payload bytes garbled each, behind valid CRCs."""
    rng = np.random.default_rng(seed)
    header_size = StreamReader(io.BytesIO(data)).header_size
    for _ in range(count):
        corrupt = bytearray(data)
        for pos in rng.integers(header_size + 20, len(data) - 30, size=4):
            corrupt[pos] = int(rng.integers(0, 256))
        yield _refresh_crcs(bytes(corrupt))


def test_corrupt_payloads_never_crash(tiny_model, clip):
    """Garbage behind valid CRCs: a BitstreamError or some frame, never a crash or a hang."""
    data = neurocodec.encode(clip[:3], model=tiny_model, gop=-1)
    for corrupt in _corrupted(data, 40, seed=0):
        try:
            frames = neurocodec.decode(corrupt, model=tiny_model)
            assert frames.dtype == np.uint8
        except BitstreamError:
            pass


def test_corrupt_payloads_coded_by_workers_never_crash(tiny_model, clip):
    """As above, with the rANS decoding in a worker process: the same errors or frames, no dead worker."""
    data = neurocodec.encode(clip[:3], model=tiny_model, gop=-1)
    for corrupt in _corrupted(data, 6, seed=1):
        try:
            serial = neurocodec.decode(corrupt, model=tiny_model)
        except BitstreamError:
            with pytest.raises(BitstreamError):
                neurocodec.decode(corrupt, model=tiny_model, entropy_workers=1)
        else:
            np.testing.assert_array_equal(neurocodec.decode(corrupt, model=tiny_model, entropy_workers=1), serial)


def test_truncated_and_flipped_streams_are_bitstream_errors(tiny_model, clip):
    data = neurocodec.encode(clip[:2], model=tiny_model)
    for cut in range(0, len(data) - 1, 7):
        try:
            neurocodec.decode(data[:cut], model=tiny_model)
        except BitstreamError:
            pass
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError):
        neurocodec.decode(bytes(flipped), model=tiny_model)


def test_missing_file_is_a_video_io_error(tmp_path):
    with pytest.raises(neurocodec.VideoIOError):
        neurocodec.decode(tmp_path / "nope.ncv")
    with pytest.raises(neurocodec.VideoIOError):
        neurocodec.open(tmp_path / "nope.ncv")


@pytest.mark.parametrize("device", ["tpu:7", "cuda:0" if not torch.cuda.is_available() else "bogus"])
def test_unusable_device_is_an_input_error(tiny_model, device):
    with pytest.raises(InputError):
        neurocodec.Encoder(8, 8, model=tiny_model, device=device)


def test_absurd_frame_size_is_refused_before_any_allocation(tiny_model):
    from neurocodec.container import StreamHeader

    header = StreamHeader(model="tiny-test", weight_hash=tiny_model.weight_hash, width=16384, height=16384,
                          fps=30, gop=32, quality=0.5)
    with pytest.raises(BitstreamError, match="limit"):
        neurocodec.Decoder(header, model=tiny_model)
