"""The command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from neurocodec.io import read_frames, write_video
from neurocodec.synthetic import demo_clip

from .conftest import DATA

TINY = str(DATA / "tiny.safetensors")


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "neurocodec", *args], capture_output=True, text=True,
                          timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "in.mp4"
    write_video(path, demo_clip(96, 64, 5), fps=25)
    return path


def test_encode_info_decode_round_trip(source, tmp_path):
    ncv, y4m = tmp_path / "out.ncv", tmp_path / "out.y4m"
    proc = run("encode", str(source), str(ncv), "--quality", "0.7", "--gop", "4")
    assert "5 frames" in proc.stdout and "bpp" in proc.stdout
    info = json.loads(run("info", str(ncv), "--json").stdout)
    assert (info["width"], info["height"], info["frames"], info["i_frames"]) == (96, 64, 5, 2)
    assert info["model"] == "nc-starter" and info["fps"] == "25/1" and info["bytes"] == ncv.stat().st_size
    assert info["frame_quality"] != [0.7, 0.7]  # the default P-frame offsets
    run("encode", str(source), str(tmp_path / "flat.ncv"), "--quality", "0.7", "--p-offsets", "0")
    assert json.loads(run("info", str(tmp_path / "flat.ncv"), "--json").stdout)["frame_quality"] == [0.7, 0.7]
    run("decode", str(ncv), str(y4m))
    frames = np.stack(list(read_frames(y4m)))
    assert frames.shape == (5, 64, 96, 3)
    run("encode", str(source), str(tmp_path / "pw.ncv"), "--quality", "0.7", "--gop", "4", "--entropy-workers", "1")
    assert (tmp_path / "pw.ncv").read_bytes() == ncv.read_bytes()
    run("decode", str(ncv), str(tmp_path / "pw.y4m"), "--entropy-workers", "2")
    np.testing.assert_array_equal(np.stack(list(read_frames(tmp_path / "pw.y4m"))), frames)
    run("encode", str(source), str(tmp_path / "refined.ncv"), "--frames", "2", "--refine", "2")
    run("decode", str(tmp_path / "refined.ncv"), str(tmp_path / "refined.y4m"))
    assert len(list(read_frames(tmp_path / "refined.y4m"))) == 2


def test_decode_to_png_folder_and_mp4_with_a_model_file(tmp_path):
    """golden.ncv was made by the tiny test model: --model points the decoder at its weights."""
    pngs, mp4 = tmp_path / "frames", tmp_path / "out.mp4"
    run("decode", str(DATA / "golden.ncv"), str(pngs), "--model", TINY)
    assert sorted(p.name for p in pngs.iterdir()) == [f"frame_{i:06d}.png" for i in range(5)]
    run("decode", str(DATA / "golden.ncv"), str(mp4), "--model", TINY)
    assert len(list(read_frames(mp4))) == 5
    wrong = run("decode", str(DATA / "golden.ncv"), str(tmp_path / "x.mp4"), ok=False)
    assert wrong.returncode == 1 and "tiny-test" in wrong.stderr


def test_user_mistakes_are_one_line_errors(source, tmp_path):
    missing = run("encode", str(tmp_path / "nope.mp4"), str(tmp_path / "x.ncv"), ok=False)
    assert missing.returncode == 1 and "error:" in missing.stderr and "Traceback" not in missing.stderr

    garbage = tmp_path / "garbage.ncv"
    garbage.write_bytes(b"\x89NCV\r\n\x1a\n" + bytes(100))
    bad = run("decode", str(garbage), str(tmp_path / "out.mp4"), ok=False)
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "out.mp4").exists()

    existing = tmp_path / "exists.ncv"
    existing.write_bytes(b"keep me")
    refused = run("encode", str(source), str(existing), ok=False)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    assert existing.read_bytes() == b"keep me"
    run("encode", str(source), str(existing), "-y", "--frames", "1")
    assert existing.read_bytes() != b"keep me"

    offsets = run("encode", str(source), str(tmp_path / "x.ncv"), "--p-offsets", "-0.1,x", ok=False)
    assert offsets.returncode == 1 and "offsets" in offsets.stderr and not (tmp_path / "x.ncv").exists()

    unsupported = run("decode", str(existing), str(tmp_path / "out.gif"), ok=False)
    assert unsupported.returncode == 1 and "error:" in unsupported.stderr


def test_warnings_are_one_line(source, tmp_path):
    """As on a CPU without bfloat16 units, where --precision bf16 is slow: a line, not a traceback-like dump."""
    script = ("import sys; from neurocodec import cli, codec; codec.emulated_bf16 = lambda device: True; "
              f"sys.argv = ['neurocodec', 'encode', {str(source)!r}, {str(tmp_path / 'o.ncv')!r}, '--frames', '1', "
              "'--precision', 'bf16']; cli.main()")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "bfloat16" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: this CPU has no bfloat16 units"), proc.stderr
    assert "UserWarning" not in proc.stderr


def test_truncated_stream_leaves_no_output(source, tmp_path):
    ncv = tmp_path / "clip.ncv"
    run("encode", str(source), str(ncv))
    data = ncv.read_bytes()
    ncv.write_bytes(data[: len(data) * 2 // 3])
    proc = run("decode", str(ncv), str(tmp_path / "out.y4m"), ok=False)
    assert proc.returncode == 1 and "truncated" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.ncv"]


def test_demo_prints_bitrate_psnr_and_speed():
    proc = run("demo", "--frames", "2")
    for word in ("kbps", "bits per pixel", "PSNR", "encode", "decode", "fps"):
        assert word in proc.stdout


def test_help_reads_well():
    proc = run("--help")
    for command in ("encode", "decode", "info", "demo", "models"):
        assert command in proc.stdout
    assert "nc-starter" in run("models").stdout
