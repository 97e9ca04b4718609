"""Rate-distortion evaluation: neurocodec against x264 and x265 under the same conditions.

``python -m eval.rd VIDEO... --out DIR [--frames 96] [--intra-period 32] ...``
(``--help`` lists everything). For each video: the first ``--frames``
frames (optionally downscaled so the longer side is ``--max-side``) are
coded by neurocodec at each ``--qualities`` value and by x264 / x265 at each
CRF, in each ``--presets`` configuration (see :mod:`eval.baselines`:
``zerolatency`` = preset medium + tune zerolatency, a plain preset name =
that preset with lookahead; every configuration is IPPP with no B-frames and
an IDR frame every ``--intra-period`` frames, like neurocodec's GOP).

Conditions, identical for every codec: the same 8-bit RGB frames; the same
intra period; quality measured on the decoded RGB output (neurocodec's own
decoder; FFmpeg's for the anchors, converted back with the same BT.709
matrix the anchors were fed through). Metrics per frame, then averaged over
frames for the sequence (as in the DCVC papers): PSNR on RGB, PSNR of the
BT.709 4:2:0 planes (Y, U, V, and YUV = (6Y+U+V)/8), RGB MS-SSIM. Rate:
the complete stream (neurocodec: the whole .ncv with its header and index;
anchors: the whole elementary stream) in bits per pixel of the coded size
and in kbit/s at the source frame rate. Speeds are wall-clock frames/s of
encoding and decoding in this process, after a 2-frame neurocodec warm-up
at each sequence's size (one-time initialisation is not coding speed);
memory is the peak RSS of each phase (see :mod:`eval.measure`).

Outputs in ``--out``: ``results.json`` (everything), ``points.csv``,
``rd_<sequence>.png``, ``rd_average.png`` and ``summary.md`` (BD-rate tables;
see :mod:`eval.report`). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from eval.baselines import BaselineConfig, decode_stream, encode_frames
from eval.bdrate import bd_psnr, bd_rate
from eval.measure import PeakMemory, environment, parse_size, sync
from neurocodec import Decoder, Encoder, StreamReader, StreamWriter, load_model
from neurocodec.codec import P_OFFSETS, check_offsets
from neurocodec.errors import InputError, NeurocodecError
from neurocodec.io import probe, read_frames
from neurocodec.metrics import bits_per_pixel, ms_ssim, psnr, psnr_yuv420
from neurocodec.models import VideoModel

__all__ = ["RDPoint", "compare", "evaluate_baseline", "evaluate_neurocodec", "frame_metrics", "load_clip", "main"]

#: Metrics compared by BD-rate: (RDPoint attribute, label, unit).
BD_METRICS = (("psnr_yuv", "PSNR-YUV (6:1:1)", "dB"), ("psnr_rgb", "PSNR-RGB", "dB"), ("ms_ssim", "MS-SSIM", ""))
_FRAME_KEYS = ("psnr_rgb", "psnr_y", "psnr_u", "psnr_v", "psnr_yuv", "ms_ssim")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class RDPoint:
    """One codec at one rate on one sequence: sequence-level and per-frame results."""

    sequence: str
    codec: str  #: "neurocodec", "x264" or "x265"
    config: str  #: model name, or the baseline's preset label ("medium+zerolatency")
    param: str  #: "quality=0.33", "crf=23", ...
    width: int
    height: int
    frames: int
    fps: float
    bytes: int
    bpp: float
    kbps: float
    psnr_rgb: float
    psnr_y: float
    psnr_u: float
    psnr_v: float
    psnr_yuv: float
    ms_ssim: float | None
    encode_s: float
    decode_s: float
    encode_fps: float
    decode_fps: float
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    per_frame: list[dict[str, Any]] = field(default_factory=list)

    @property
    def curve(self) -> str:
        return f"{self.codec} {self.config}"


def frame_metrics(ref: np.ndarray, dec: np.ndarray, frame_bytes: list[int], frame_types: list[str],
                  with_ms_ssim: bool = True) -> list[dict[str, Any]]:
    """Per-frame rate and quality of decoded ``dec`` against ``ref`` (uint8 [T, H, W, 3])."""
    if ref.shape != dec.shape:
        raise InputError(f"decoded frames {dec.shape} do not match the source {ref.shape}")
    h, w = ref.shape[1:3]
    rows = []
    for i, (a, b) in enumerate(zip(ref, dec, strict=True)):
        yuv = psnr_yuv420(a, b)
        rows.append({
            "index": i, "type": frame_types[i], "bytes": frame_bytes[i],
            "bpp": bits_per_pixel(frame_bytes[i], w, h, 1), "psnr_rgb": psnr(a, b),
            **{f"psnr_{k}": v for k, v in yuv.items()},
            "ms_ssim": ms_ssim(a, b) if with_ms_ssim else None,
        })
    return rows


def _point(sequence: str, codec: str, config: str, param: str, ref: np.ndarray, nbytes: int, fps: float,
           encode_s: float, decode_s: float, per_frame: list[dict[str, Any]], **extra: Any) -> RDPoint:
    t, h, w = ref.shape[:3]
    means = {k: (float(np.mean([r[k] for r in per_frame])) if per_frame[0][k] is not None else None)
             for k in _FRAME_KEYS}
    return RDPoint(sequence=sequence, codec=codec, config=config, param=param, width=w, height=h, frames=t,
                   fps=fps, bytes=nbytes, bpp=bits_per_pixel(nbytes, w, h, t), kbps=8 * nbytes * fps / t / 1000,
                   encode_s=encode_s, decode_s=decode_s, encode_fps=t / encode_s if encode_s else float("inf"),
                   decode_fps=t / decode_s if decode_s else float("inf"), per_frame=per_frame, **means, **extra)


def evaluate_neurocodec(frames: np.ndarray, model: VideoModel, quality: float, *, intra_period: int = 32,
                        fps: float = 30.0, device: str = "cpu", sequence: str = "clip",
                        with_ms_ssim: bool = True, refine: int = 0,
                        p_offsets: Sequence[float] = P_OFFSETS) -> RDPoint:
    """Encode ``frames`` to a complete in-memory .ncv stream, decode it, and measure it."""
    t, h, w = frames.shape[:3]
    enc = Encoder(w, h, model=model, quality=quality, gop=intra_period, fps=Fraction(fps).limit_denominator(1001000),
                  frame_count=t, device=device, refine=refine, p_offsets=p_offsets)
    buf, packets = io.BytesIO(), []
    recon: list[bytes] = []  # digests of the encoder's reconstructions (frames would double peak memory)
    with PeakMemory(device) as mem_enc:
        t0 = time.perf_counter()
        with StreamWriter(buf, enc.header) as writer:
            for frame in frames:
                for packet in enc.encode(frame):
                    writer.write(packet)
                    packets.append(packet)
                recon.append(hashlib.blake2b(enc.reconstruction.tobytes(), digest_size=16).digest())
        sync(device)
        encode_s = time.perf_counter() - t0
    data = buf.getvalue()
    sizes = [len(p.to_bytes()) for p in packets]  # wire size of each frame's packet
    types = [p.frame_type.name for p in packets]
    with PeakMemory(device) as mem_dec:
        t0 = time.perf_counter()
        reader = StreamReader(io.BytesIO(data))
        dec = Decoder(reader.header, model=model, device=device)
        decoded = np.stack([dec.decode(p) for p in reader])
        sync(device)
        decode_s = time.perf_counter() - t0
    matches = recon == [hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in decoded]
    if not matches:
        log(f"  warning: {sequence} quality={quality:g}: decoder output differs from the encoder's reconstruction")
    options = {"model": getattr(model, "name", "custom"), "weight_hash": getattr(model, "weight_hash", None),
               "quality": quality, "coded_quality": enc.header.quality, "gop": intra_period, "device": str(device),
               "refine": refine, "p_offsets": list(enc.p_offsets), "container_overhead_bytes": len(data) - sum(sizes),
               "decoder_matches_encoder": matches}
    config = options["model"] + (f"+refine{refine}" if refine else "")
    return _point(sequence, "neurocodec", config, f"quality={quality:g}", frames, len(data), fps,
                  encode_s, decode_s, frame_metrics(frames, decoded, sizes, types, with_ms_ssim),
                  memory={"encode": mem_enc.result(), "decode": mem_dec.result()}, options=options)


def evaluate_baseline(frames: np.ndarray, config: BaselineConfig, *, fps: float = 30.0, sequence: str = "clip",
                      with_ms_ssim: bool = True) -> RDPoint:
    """Encode and decode ``frames`` with one x264/x265 configuration, and measure it."""
    with PeakMemory() as mem_enc:
        result = encode_frames(frames, config, Fraction(fps).limit_denominator(1001000))
    with PeakMemory() as mem_dec:
        decode_stream(result, frames.shape[2], frames.shape[1])
    types = ["I" if k else "P" for k in result.keyframes]
    options = {"encoder_options": result.options, "header_bytes": result.header_bytes,
               "padded_to": result.padded_to, **result.extra}
    return _point(sequence, config.codec, config.label.split(" ", 1)[1], config.rate_control, frames,
                  len(result.bitstream), fps, result.encode_s, result.decode_s,
                  frame_metrics(frames, result.frames, result.frame_bytes, types, with_ms_ssim),
                  memory={"encode": mem_enc.result(), "decode": mem_dec.result()}, options=options)


def _resize(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Lanczos-downscale so the longer side is <= ``max_side``, keeping even dimensions."""
    h, w = frames.shape[1:3]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frames
    nw, nh = (max(2, 2 * round(v * scale / 2)) for v in (w, h))
    return np.stack([np.asarray(Image.fromarray(f).resize((nw, nh), Image.Resampling.LANCZOS)) for f in frames])


def load_clip(path: str | Path, frames: int, *, size: tuple[int, int] | None = None, fps: float | None = None,
              max_side: int | None = None) -> tuple[np.ndarray, float, dict[str, Any]]:
    """First ``frames`` frames of a video as uint8 RGB, its frame rate, and what was done to it."""
    info = probe(path, size=size, fps=fps)
    clip = np.stack(list(read_frames(path, max_frames=frames, size=size, fps=fps)))
    if len(clip) < frames:
        log(f"  note: {path} has only {len(clip)} frames (asked for {frames})")
    coded = _resize(clip, max_side) if max_side else clip
    meta = {"source": str(path), "source_size": [info.width, info.height], "coded_size": [coded.shape[2],
            coded.shape[1]], "frames": len(coded), "fps": float(fps or info.fps), "provenance": _provenance(Path(path)),
            "downscaled": "lanczos (PIL), even sizes" if coded.shape != clip.shape else None}
    return coded, float(fps or info.fps), meta


def _provenance(path: Path) -> str:
    """``held-out`` / ``TRAINING CLIP`` for the shared corpus (beside a MANIFEST.tsv), else ``external``."""
    try:
        from training.data import VALIDATION_CLIPS, VIDEO_SUFFIXES
    except ImportError:
        return "unknown"
    if path.stem in VALIDATION_CLIPS:
        return "held-out"
    if (path.parent / "MANIFEST.tsv").exists() and path.suffix.lower() in VIDEO_SUFFIXES:
        return "TRAINING CLIP"
    return "external"


def compare(points: list[RDPoint]) -> list[dict[str, Any]]:
    """BD-rates per sequence: every neurocodec curve vs every anchor, and x265 vs x264 per preset.

    Rate axis: bpp. One row per (sequence, test, anchor, metric).
    """
    curves: dict[tuple[str, str], list[RDPoint]] = {}
    for p in points:
        curves.setdefault((p.sequence, p.curve), []).append(p)
    rows = []
    for seq in dict.fromkeys(p.sequence for p in points):
        names = [c for s, c in curves if s == seq]
        ours = [c for c in names if c.startswith("neurocodec ")]
        anchors = [c for c in names if not c.startswith("neurocodec ")]
        pairs = [(t, a) for t in ours for a in anchors] + [(t, ours[0]) for t in ours[1:]]
        pairs += [(c, "x264" + c[4:]) for c in anchors if c.startswith("x265 ") and "x264" + c[4:] in names]
        for test, anchor in pairs:
            a, t = curves[seq, anchor], curves[seq, test]
            for key, label, unit in BD_METRICS:
                if any(getattr(p, key) is None for p in a + t):
                    continue
                args = ([p.bpp for p in a], [getattr(p, key) for p in a],
                        [p.bpp for p in t], [getattr(p, key) for p in t])
                rows.append({"sequence": seq, "test": test, "anchor": anchor, "metric": key, "metric_label": label,
                             "bd_rate": bd_rate(*args, unit=unit or key).to_dict(),
                             "bd_quality": bd_psnr(*args).to_dict()})
    return rows



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m eval.rd", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("videos", nargs="+", help="video files (any container PyAV reads, .y4m, raw .yuv with --size)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    ap.add_argument("--frames", type=int, default=96, help="code the first N frames")
    ap.add_argument("--intra-period", type=int, default=32, help="frames between intra frames; -1: first only")
    ap.add_argument("--qualities", type=float, nargs="+", default=[0.0, 0.33, 0.66, 1.0], help="neurocodec qualities")
    ap.add_argument("--x264-crf", type=float, nargs="*", default=[18, 23, 28, 33, 38], help="x264 CRFs (none: skip)")
    ap.add_argument("--x265-crf", type=float, nargs="*", default=[18, 23, 28, 33, 38], help="x265 CRFs (none: skip)")
    ap.add_argument("--presets", nargs="+", default=["zerolatency", "medium"],
                    help="anchor configurations: zerolatency (= medium+zerolatency), PRESET or PRESET+zerolatency")
    ap.add_argument("--baseline-threads", type=int, default=1, help="x264/x265 threads (1: reproducible streams)")
    ap.add_argument("--model", nargs="+", default=["nc-starter"],
                    help="registered model names or .safetensors files; with several, each later one is also "
                         "compared with the first (e.g. a faster variant against the default)")
    ap.add_argument("--refine", type=int, nargs="+", default=[0],
                    help="encoder latent-refinement steps per frame (neurocodec.refine); several values give "
                         "one curve each, later ones compared with the first")
    ap.add_argument("--p-offsets", type=float, nargs="+", default=list(P_OFFSETS),
                    help="quality added to successive P-frames after each I-frame, in turn (0: every frame at its "
                         "quality)")
    ap.add_argument("--device", default="cpu", help="torch device for neurocodec")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--size", type=parse_size, default=None, help="WxH of raw .yuv input")
    ap.add_argument("--fps", type=float, default=None, help="frame rate of raw .yuv input (default 30)")
    ap.add_argument("--max-side", type=int, default=None, help="downscale so the longer side is at most N")
    ap.add_argument("--no-ms-ssim", action="store_true",
                    help="skip MS-SSIM (about 1.5 s per 1080p frame on one CPU thread: it dominates metric time)")
    args = ap.parse_args(argv)
    if args.frames < 1 or (args.max_side is not None and args.max_side < 2):
        ap.error("--frames must be >= 1 and --max-side >= 2")
    if args.intra_period == 0 or args.intra_period < -1:
        ap.error("--intra-period must be >= 1 or -1")
    if any(r < 0 for r in args.refine):
        ap.error("--refine must be >= 0")
    if not all(0.0 <= q <= 1.0 for q in args.qualities):
        ap.error("--qualities must lie in [0, 1]")
    try:
        args.p_offsets = list(check_offsets(args.p_offsets))
    except InputError as e:
        ap.error(str(e))
    return args


def _unique_names(paths: list[str]) -> list[str]:
    names: list[str] = []
    for p in paths:
        stem, n = Path(p).stem, 2
        name = stem
        while name in names:
            name, n = f"{stem}_{n}", n + 1
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    """The whole evaluation; returns the process exit status."""
    from eval import report

    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: CUDA is not available in this torch build / on this machine")
    for v in args.videos:  # fail fast, before any long work
        probe(v, size=args.size, fps=args.fps)
    models = [load_model(m, device=args.device) for m in args.model]
    configs = [BaselineConfig.from_label(codec, label, crf=crf, intra_period=args.intra_period,
                                         threads=args.baseline_threads)
               for codec, crfs in (("x264", args.x264_crf), ("x265", args.x265_crf))
               for label in args.presets for crf in crfs]
    points: list[RDPoint] = []
    sequences: dict[str, dict[str, Any]] = {}
    names = _unique_names(args.videos)
    for i, (path, name) in enumerate(zip(args.videos, names, strict=True), 1):
        log(f"[{i}/{len(names)}] {name}: reading {path}")
        frames, fps, meta = load_clip(path, args.frames, size=args.size, fps=args.fps, max_side=args.max_side)
        sequences[name] = meta
        if meta["provenance"] == "TRAINING CLIP":
            log(f"  warning: {name} is a training clip, not held out: its results flatter neurocodec")
        # one-time initialisation (allocator, kernels picked per size) must not count as coding speed
        for model in models:
            evaluate_neurocodec(frames[:2], model, args.qualities[0], intra_period=args.intra_period, fps=fps,
                                device=args.device, sequence=name, with_ms_ssim=False)
        jobs: list[tuple[VideoModel, int, float] | BaselineConfig] = [
            (m, r, q) for m in models for r in args.refine for q in args.qualities]
        jobs += configs
        for j, job in enumerate(jobs, 1):
            if isinstance(job, BaselineConfig):
                label = f"{job.label} {job.rate_control}"
                p = evaluate_baseline(frames, job, fps=fps, sequence=name, with_ms_ssim=not args.no_ms_ssim)
            else:
                model, refine, quality = job
                label = f"neurocodec {getattr(model, 'name', '')} refine={refine} quality={quality:g}"
                p = evaluate_neurocodec(frames, model, quality, intra_period=args.intra_period, fps=fps,
                                        device=args.device, sequence=name, with_ms_ssim=not args.no_ms_ssim,
                                        refine=refine, p_offsets=args.p_offsets)
            points.append(p)
            log(f"  [{j}/{len(jobs)}] {label}: {p.bpp:.4f} bpp, {p.psnr_yuv:.2f} dB YUV, "
                f"enc {p.encode_fps:.1f} fps, dec {p.decode_fps:.1f} fps")
    conditions = {"frames": args.frames, "intra_period": args.intra_period, "qualities": args.qualities,
                  "refine": args.refine, "p_offsets": args.p_offsets,
                  "x264_crf": args.x264_crf, "x265_crf": args.x265_crf, "presets": args.presets,
                  "baseline_threads": args.baseline_threads,
                  "models": [{"model": getattr(m, "name", path), "weight_hash": getattr(m, "weight_hash", None)}
                             for m, path in zip(models, args.model, strict=True)],
                  "max_side": args.max_side,
                  "ms_ssim": not args.no_ms_ssim, "rate": "bpp of the complete stream (coded size)",
                  "sequence_quality": "mean over frames of per-frame metrics"}
    report.write_all(args.out, points, compare(points), sequences, conditions, environment(args.device))
    log(f"wrote {args.out}/summary.md, results.json, points.csv and {len(sequences) + 1} plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except NeurocodecError as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
