"""The evaluation suite: metrics plumbing, BD-rate, x264/x265 anchors, the RD and bench CLIs."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import bjontegaard
import numpy as np
import pytest
import torch

from eval import bench, compare, rd
from eval.baselines import BaselineConfig, encode_baseline
from eval.bdrate import bd_psnr, bd_rate
from eval.measure import PeakMemory
from neurocodec.codec import P_OFFSETS
from neurocodec.colour import rgb_to_yuv420, yuv420_to_rgb
from neurocodec.errors import InputError
from neurocodec.io import write_video
from neurocodec.synthetic import moving_pattern
from neurocodec.zoo import save_model

DATA = Path(__file__).parent / "data"
TINY = str(DATA / "tiny.safetensors")

# Realistic RD curves (bpp, PSNR dB), including unequal point counts.
CURVES = [
    (([0.05, 0.1, 0.2, 0.4], [30.1, 32.9, 35.4, 37.8]), ([0.04, 0.09, 0.21, 0.45], [30.3, 33.4, 36.1, 38.2])),
    (([0.02, 0.05, 0.11, 0.25, 0.6], [27.0, 29.8, 32.6, 35.9, 39.1]),
     ([0.03, 0.07, 0.15, 0.4], [28.2, 31.0, 33.0, 36.9])),
    (([0.1, 0.15, 0.3, 0.5], [33.0, 34.0, 36.5, 37.0]), ([0.2, 0.25, 0.5, 0.9], [33.5, 35.5, 36.8, 39.0])),
]


@pytest.fixture(scope="module")
def pattern() -> np.ndarray:
    return moving_pattern(64, 48, 6, seed=5)


# ----------------------------------------------------------------------------- metrics


def test_frame_metrics_of_a_known_error() -> None:
    ref = np.full((2, 16, 16, 3), 100, np.uint8)
    rows = rd.frame_metrics(ref, ref + 1, [100, 50], ["I", "P"], with_ms_ssim=False)
    assert rows[0]["psnr_rgb"] == pytest.approx(20 * math.log10(255), rel=1e-12)
    # a constant RGB offset of 1 is an offset of 219/255 in Y (rounded to 1 code value)
    assert rows[1]["psnr_y"] == pytest.approx(20 * math.log10(255), rel=1e-12)
    assert rows[1]["bpp"] == pytest.approx(8 * 50 / 256)
    assert [r["type"] for r in rows] == ["I", "P"] and rows[0]["ms_ssim"] is None


# ----------------------------------------------------------------------------- BD-rate


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.3, 2.0])
def test_bd_rate_of_a_curve_scaled_in_rate_is_the_factor(factor: float) -> None:
    rate, q = [0.05, 0.1, 0.2, 0.4, 0.8], [29.0, 31.5, 34.2, 36.1, 38.5]
    res = bd_rate(rate, q, [r * factor for r in rate], q)
    assert res.value == pytest.approx(100 * (factor - 1), abs=1e-9)
    assert res.overlap == pytest.approx(1.0)
    assert bd_rate(rate, q, rate, q).value == pytest.approx(0.0, abs=1e-12)
    assert bd_psnr(rate, q, rate, [v + 0.7 for v in q]).value == pytest.approx(0.7, abs=1e-12)


@pytest.mark.parametrize(("anchor", "test"), CURVES)
def test_bd_matches_the_bjontegaard_package(anchor: tuple, test: tuple) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its low-overlap warning
        ref_rate = bjontegaard.bd_rate(*anchor, *test, method="pchip", require_matching_points=False)
        ref_psnr = bjontegaard.bd_psnr(*anchor, *test, method="pchip", require_matching_points=False)
    assert bd_rate(*anchor, *test).value == pytest.approx(ref_rate, rel=1e-9, abs=1e-9)
    assert bd_psnr(*anchor, *test).value == pytest.approx(ref_psnr, rel=1e-9, abs=1e-9)
    # point order does not matter
    shuffled = [list(reversed(v)) for v in test]
    assert bd_rate(*anchor, *shuffled).value == pytest.approx(ref_rate, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("anchor", "test", "reason"), [
    (([1, 2, 3], [30, 31, 32]), ([1, 2, 3, 4], [30, 31, 32, 33]), "at least 4"),
    (([1, 2, 3, 4], [30, 32, 31, 33]), ([1, 2, 3, 4], [30, 31, 32, 33]), "not monotonic"),
    (([1, 2, 3, 4], [30, 31, 32, 33]), ([10, 20, 30, 40], [40, 41, 42, 43]), "do not overlap"),
    (([1, 2, 2, 4], [30, 31, 32, 33]), ([1, 2, 3, 4], [30, 31, 32, 33]), "same rate"),
    (([0, 2, 3, 4], [30, 31, 32, 33]), ([1, 2, 3, 4], [30, 31, 32, 33]), "rate <= 0"),
    (([1, 2, 3, 4], [30, 31, math.nan, 33]), ([1, 2, 3, 4], [30, 31, 32, 33]), "non-finite"),
])
def test_bd_of_unusable_curves_is_nan_with_a_reason(anchor: tuple, test: tuple, reason: str) -> None:
    for res in (bd_rate(*anchor, *test), bd_psnr(*anchor, *test)):
        assert math.isnan(res.value) and not res.ok
        assert reason in res.reason
        assert res.to_dict()["value"] is None


# ----------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_baseline_rate_keyframes_and_output(pattern: np.ndarray, codec: str) -> None:
    hi = encode_baseline(pattern, BaselineConfig(codec=codec, crf=22, intra_period=3))
    lo = encode_baseline(pattern, BaselineConfig(codec=codec, crf=40, intra_period=3))
    assert len(lo.bitstream) < len(hi.bitstream)
    for r in (hi, lo):
        assert r.frames.shape == pattern.shape and r.frames.dtype == np.uint8
        assert sum(r.frame_bytes) == len(r.bitstream) and len(r.frame_bytes) == 6
        assert r.keyframes == [True, False, False, True, False, False]
        assert r.extra["decoded_pict_types"] == "IPPIPP"
        assert 0 < r.header_bytes < r.frame_bytes[0]
        assert r.padded_to is None
    params = hi.options[f"{codec}-params"]
    assert "keyint=3:min-keyint=3:scenecut=0:bframes=0" in params
    assert hi.options["tune"] == "zerolatency" and hi.options["crf"] == "22"
    psnr_hi = rd.frame_metrics(pattern, hi.frames, hi.frame_bytes, ["?"] * 6, with_ms_ssim=False)
    assert np.mean([r["psnr_yuv"] for r in psnr_hi]) > 35


def test_baseline_intra_period_minus_one_and_odd_size() -> None:
    clip = moving_pattern(65, 47, 5, seed=1)
    r = encode_baseline(clip, BaselineConfig(codec="x264", crf=23, intra_period=-1, zerolatency=False))
    assert r.keyframes == [True, False, False, False, False]
    assert "keyint=6:" in r.options["x264-params"] and "tune" not in r.options
    assert r.padded_to == (66, 48) and r.frames.shape == clip.shape


def test_baseline_sees_exactly_neurocodecs_yuv() -> None:
    """Lossless x264 must return exactly what BT.709 4:2:0 conversion and back gives."""
    clip = moving_pattern(33, 17, 2, seed=2)
    r = encode_baseline(clip, BaselineConfig(codec="x264", crf=None, qp=0))
    even = np.pad(clip, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    expect = np.stack([yuv420_to_rgb(*rgb_to_yuv420(f))[:17, :33] for f in even])
    np.testing.assert_array_equal(r.frames, expect)


def test_baseline_config_labels_and_validation() -> None:
    c = BaselineConfig.from_label("x265", "zerolatency", crf=30)
    assert (c.preset, c.zerolatency, c.label) == ("medium", True, "x265 medium+zerolatency")
    assert not BaselineConfig.from_label("x264", "veryslow").zerolatency
    assert BaselineConfig.from_label("x264", "slow+zerolatency").label == "x264 slow+zerolatency"
    for bad in ({"codec": "vp9"}, {"preset": "warp"}, {"crf": None}, {"qp": 20}, {"intra_period": 0}):
        with pytest.raises(InputError):
            BaselineConfig(**bad)
    with pytest.raises(InputError):
        BaselineConfig.from_label("x264", "medium+film")


# ----------------------------------------------------------------------------- rd CLI


def test_rd_end_to_end(tmp_path: Path, pattern: np.ndarray) -> None:
    video = tmp_path / "pattern.y4m"
    write_video(video, pattern, 25)
    out = tmp_path / "results"
    crfs = ["22", "28", "34", "40"]
    rc = rd.main([str(video), "--out", str(out), "--model", TINY, "--qualities", "0.2", "0.8", "--frames", "4",
                  "--x264-crf", *crfs, "--x265-crf", *crfs, "--presets", "zerolatency", "medium"])
    assert rc == 0
    for name in ("results.json", "points.csv", "summary.md", "rd_pattern.png", "rd_average.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "rd_pattern.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    points = data["points"]
    assert len(points) == 2 + 2 * 2 * len(crfs)
    assert {p["codec"] for p in points} == {"neurocodec", "x264", "x265"}
    for p in points:
        assert p["frames"] == 4 and len(p["per_frame"]) == 4 and p["width"] == 64
        assert p["bytes"] >= sum(f["bytes"] for f in p["per_frame"])
        assert p["per_frame"][0]["type"] == "I" and p["memory"]["encode"]["peak_rss_mib"] > 0
    nc = [p for p in points if p["codec"] == "neurocodec"]
    assert all(p["options"]["decoder_matches_encoder"] for p in nc)
    assert data["sequences"]["pattern"]["provenance"] == "external"
    assert data["conditions"]["intra_period"] == 32 and data["environment"]["versions"]["av"]
    assert data["conditions"]["p_offsets"] == list(P_OFFSETS) == nc[0]["options"]["p_offsets"]
    bd = {(r["sequence"], r["test"], r["anchor"], r["metric"]): r for r in data["bd"]}
    ours = bd["pattern", "neurocodec tiny-test", "x264 medium+zerolatency", "psnr_yuv"]["bd_rate"]
    assert ours["value"] is None and "at least 4" in ours["reason"]
    theirs = bd["pattern", "x265 medium", "x264 medium", "psnr_yuv"]["bd_rate"]
    assert math.isfinite(theirs["value"])
    assert bd["average", "x265 medium", "x264 medium", "psnr_yuv"]["bd_rate"]["value"] == theirs["value"]
    csv_lines = (out / "points.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(points) and csv_lines[0].startswith("sequence,codec,config,param")
    summary = (out / "summary.md").read_text()
    assert "| pattern |" in summary and "x265 medium vs x264 medium" in summary and "keyint=32" in summary


def test_compare_two_runs_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that needs 0.8 times the bits for every PSNR measures -20 %; anchors and other clips are ignored."""
    rate, quality = CURVES[1][0]
    header = "sequence,codec,config,param,bpp,psnr_yuv\n"

    def write(name: str, scale: float, extra: str) -> Path:
        rows = [f"clip,neurocodec,m,q,{r * scale},{q}" for r, q in zip(rate, quality, strict=True)]
        (tmp_path / name).write_text(header + "\n".join(rows + [extra]) + "\n")
        return tmp_path / name

    old = write("old.csv", 1.0, "clip,x264,medium,crf=23,0.01,50")
    new = write("new.csv", 0.8, "other,neurocodec,m,q,0.1,30")
    assert compare.main([str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "clip (m): BD-rate -20.0 %" in out and "mean over 1 curve(s): BD-rate -20.0 %" in out
    unrelated = tmp_path / "unrelated.csv"
    unrelated.write_text(header + "other,neurocodec,m,q,0.1,30\n")
    with pytest.raises(SystemExit):  # nothing in common: argparse's error, not a traceback
        compare.main([str(old), str(unrelated)])


def test_rd_compares_a_second_model_with_the_first(tmp_path: Path, pattern: np.ndarray, tiny_model) -> None:
    video = tmp_path / "pattern.y4m"
    write_video(video, pattern, 25)
    variant = tmp_path / "variant.safetensors"
    save_model(copy.deepcopy(tiny_model), variant, "tiny-variant")
    out = tmp_path / "results"
    rc = rd.main([str(video), "--out", str(out), "--model", TINY, str(variant), "--qualities", "0", "0.3", "0.6", "1",
                  "--frames", "3", "--x264-crf", "30", "40", "--x265-crf", "--presets", "zerolatency"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert [m["model"] for m in data["conditions"]["models"]] == ["tiny-test", "tiny-variant"]
    assert {p["config"] for p in data["points"] if p["codec"] == "neurocodec"} == {"tiny-test", "tiny-variant"}
    bd = {(r["sequence"], r["test"], r["anchor"], r["metric"]): r for r in data["bd"]}
    # the untrained tiny model's curve is flat, so the row holds a reason rather than a value
    assert ("pattern", "neurocodec tiny-variant", "neurocodec tiny-test", "psnr_yuv") in bd
    assert ("pattern", "neurocodec tiny-test", "neurocodec tiny-variant", "psnr_yuv") not in bd
    assert "compared with `tiny-test`" in (out / "summary.md").read_text()


def test_rd_gives_each_refinement_its_own_curve(tmp_path: Path, pattern: np.ndarray) -> None:
    video = tmp_path / "pattern.y4m"
    write_video(video, pattern[:2], 25)
    out = tmp_path / "results"
    rc = rd.main([str(video), "--out", str(out), "--model", TINY, "--refine", "0", "2", "--qualities", "0", "1",
                  "--frames", "2", "--x264-crf", "--x265-crf", "--no-ms-ssim"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["conditions"]["refine"] == [0, 2]
    points = {(p["config"], p["options"]["refine"]) for p in data["points"]}
    assert points == {("tiny-test", 0), ("tiny-test+refine2", 2)}
    assert any(r["test"] == "neurocodec tiny-test+refine2" and r["anchor"] == "neurocodec tiny-test"
               for r in data["bd"])


def test_rd_reports_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    assert rd.main([str(junk), "--out", str(tmp_path / "o"), "--model", TINY]) == 1
    assert rd.main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o"), "--model", TINY]) == 1
    err = capsys.readouterr().err
    assert "junk.mp4" in err and "missing.mp4" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- bench


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_runs_and_times_every_stage(tmp_path: Path, precision: str) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--sizes", "64x64", "--frames", "2", "--warmup", "1", "--model", TINY,
                       "--precision", precision, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["precision"] == precision
    for phase in ("encode", "decode"):
        s = report["results"][0][phase]
        assert s["fps"] > 0 and len(s["per_frame"]) == 2 and len(s["warmup_latency_ms"]) == 1
        assert all(s["stages_ms_per_frame"][k] > 0 for k in ("network", "entropy", "exact", "io"))
        assert sum(s["stage_share"].values()) == pytest.approx(1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_bench_without_cuda_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--device", "cuda"]) == 2
    assert "CUDA requested but not available" in capsys.readouterr().err


def test_peak_memory_sees_a_large_allocation() -> None:
    with PeakMemory() as m:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
        del block
    r = m.result()
    assert r["rss_scope"] in ("phase", "process-lifetime")
    assert r["peak_rss_mib"] >= (r["start_rss_mib"] or 0) + (60 if r["rss_scope"] == "phase" else 0)


def test_motion_report_prints_one_row_per_frame(tmp_path, capsys):
    from eval import motion
    from neurocodec.io import write_video
    from neurocodec.synthetic import moving_pattern

    from .conftest import DATA

    video = tmp_path / "clip.mp4"
    write_video(video, moving_pattern(96, 64, 3, seed=1), fps=25)
    assert motion.main([str(video), "--frames", "3", "--model", str(DATA / "tiny.safetensors")]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[1] for r in rows] == ["I", "P", "P"]
    assert all(math.isfinite(float(v)) for r in rows[1:] for v in r.split()[2:])


def test_ceiling_codes_what_the_encoder_codes(pattern: np.ndarray, tiny_model) -> None:
    """The diagnostic's coded column is the codec's own: same streams, same reconstructions."""
    from eval.ceiling import ceiling
    from neurocodec import Encoder
    from neurocodec.metrics import psnr_yuv420

    h, w = pattern.shape[1:3]
    rows = ceiling(pattern[:4], tiny_model, 0.7, fit=3)
    enc = Encoder(w, h, model=tiny_model, quality=0.7, gop=32, p_offsets=(0,))
    for row, frame in zip(rows, pattern[:4], strict=True):
        (packet,) = enc.encode(frame)
        assert row["type"] == packet.frame_type.name
        assert row["bpp"] == 8 * sum(len(s) for s in packet.streams) / (w * h)
        assert row["coded"] == psnr_yuv420(enc.reconstruction, frame)["yuv"]
        # best of the Adam iterates, which start from the unquantised latent (scored after 8-bit rounding)
        assert row["fitted"] >= row["unquantised"] - 0.05


def test_ceiling_report_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eval import ceiling

    video = tmp_path / "clip.mp4"
    write_video(video, moving_pattern(96, 64, 3, seed=1), fps=25)
    out = tmp_path / "ceiling.json"
    assert ceiling.main([str(video), "--frames", "3", "--qualities", "0", "1", "--model", TINY, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert [line.split()[1:3] for line in lines] == [["0", "I"], ["0", "P"], ["1", "I"], ["1", "P"]]
    data = json.loads(out.read_text())
    assert [len(r["frames"]) for r in data["results"]] == [3, 3]
    assert "fitted" not in data["results"][0]["frames"][0]
