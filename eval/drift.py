"""Cross-device determinism: decode one stream under other devices/precisions, measure the drift.

``python -m eval.drift [SOURCE] [--frames 96] [--gop -1] [--max-side 640] [--encode cpu:fp32]
[--decode cpu:fp32 cpu:bf16 cuda:fp32 cuda:fp16] [--model nc-starter] [--out drift.json]``

A stream is encoded once (``--encode DEVICE:PRECISION``) and decoded under
every ``--decode`` setting. The table choice of the entropy coder is exact
(see :mod:`neurocodec.entropy`), so every setting must *parse* the stream;
what may differ is the float arithmetic of the transforms, hence the
reconstruction. Each row reports, against the encoder's own reconstruction
(what a decoder on the encoding device outputs): PSNR per frame (mean, worst,
first and last P-frame), the share of bit-identical pixels, the largest pixel
difference, and the PSNR against the source for both, so a growing gap along
the GOP (drift) is visible. ``--gop -1`` (one I-frame, then only P-frames) is
the worst case: nothing resets the drift. Settings whose device is missing
are skipped and listed. The pseudo-device ``cpu-nodnn`` decodes on the CPU
with oneDNN off: other convolution kernels, another summation order, the
nearest stand-in for "another machine in fp32" that one CPU offers.

SOURCE: a video file (its first ``--frames`` frames, downscaled as in
:mod:`eval.rd` so the longer side is at most ``--max-side``); without one,
the built-in :func:`neurocodec.synthetic.demo_clip` at ``--size``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.measure import environment, parse_size
from eval.rd import load_clip
from neurocodec import Decoder, Encoder, StreamReader, StreamWriter, load_model
from neurocodec.codec import PRECISIONS
from neurocodec.errors import NeurocodecError
from neurocodec.metrics import psnr
from neurocodec.synthetic import demo_clip

__all__ = ["coded_with_reconstructions", "drift", "main"]


#: Pseudo-device: the CPU with oneDNN switched off, so convolutions run other
#: kernels with another summation order, as on another machine.
OTHER_KERNELS = "cpu-nodnn"


def _setting(text: str) -> tuple[str, str]:
    device, _, precision = text.partition(":")
    precision = precision or "fp32"
    if precision not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return device, precision


def _available(device: str) -> bool:
    return device == OTHER_KERNELS or torch.device(device).type != "cuda" or torch.cuda.is_available()


def _encode(frames: np.ndarray, model: str, quality: float, gop: int, device: str,
            precision: str) -> tuple[bytes, list[np.ndarray]]:
    h, w = frames.shape[1:3]
    enc = Encoder(w, h, model=load_model(model, device=device), quality=quality, gop=gop,
                  frame_count=len(frames), device=device, precision=precision)
    return coded_with_reconstructions(enc, frames)


def coded_with_reconstructions(enc: Encoder, frames: np.ndarray) -> tuple[bytes, list[np.ndarray]]:
    """Encode ``frames`` into a whole stream, keeping the encoder's reconstruction of each frame."""
    buf, recon = io.BytesIO(), []
    with StreamWriter(buf, enc.header) as writer:
        for frame in frames:
            for packet in enc.encode(frame):
                writer.write(packet)
            recon.append(enc.reconstruction)
    return buf.getvalue(), recon


def drift(frames: np.ndarray, *, model: str, quality: float, gop: int, encode: tuple[str, str],
          decode: list[tuple[str, str]]) -> dict[str, Any]:
    """Encode ``frames`` under ``encode``; decode under each of ``decode``; per-setting drift stats."""
    data, recon = _encode(frames, model, quality, gop, *encode)
    rows, skipped = [], []
    for device, precision in decode:
        if not _available(device):
            skipped.append(f"{device}:{precision}")
            continue
        reader = StreamReader(io.BytesIO(data))
        torch_dev = "cpu" if device == OTHER_KERNELS else device
        dec = Decoder(reader.header, model=load_model(model, device=torch_dev), device=torch_dev, precision=precision)
        with warnings.catch_warnings(), torch.backends.mkldnn.flags(enabled=device != OTHER_KERNELS):
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # torch noise
            out = [dec.decode(p) for p in reader]
        vs_enc = [psnr(a, b) for a, b in zip(out, recon, strict=True)]
        diff = [np.abs(a.astype(np.int16) - b) for a, b in zip(out, recon, strict=True)]
        rows.append({
            "decode": f"{device}:{precision}",
            "psnr_vs_encoder_db": {"mean": float(np.mean(vs_enc)), "min": float(np.min(vs_enc)),
                                   "first_p": vs_enc[1] if len(vs_enc) > 1 else vs_enc[0], "last": vs_enc[-1]},
            "identical_pixels": float(np.mean([np.mean(d == 0) for d in diff])),
            "max_abs_diff": int(max(d.max() for d in diff)),
            "psnr_vs_source_db": {"decoder": float(np.mean([psnr(a, s) for a, s in zip(out, frames, strict=True)])),
                                  "encoder": float(np.mean([psnr(a, s) for a, s in zip(recon, frames, strict=True)]))},
            "per_frame_psnr_vs_encoder_db": vs_enc,
        })
    return {"encode": ":".join(encode), "frames": len(frames), "size": [frames.shape[2], frames.shape[1]],
            "gop": gop, "quality": quality, "bytes": len(data), "rows": rows, "skipped": skipped}


def _json_safe(obj: Any) -> Any:
    """Identical frames have an infinite PSNR: written as null (JSON has no infinity)."""
    if isinstance(obj, float):
        return None if math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    w, h = report["size"]
    table = Table(title=f"decode drift vs the encoder's reconstruction ({report['frames']} frames {w}x{h}, "
                        f"gop {report['gop']}, encoded on {report['encode']})")
    for col in ("decode on", "PSNR mean", "worst", "first P", "last", "identical px", "max diff",
                "PSNR vs source dec / enc"):
        table.add_column(col, justify="right")
    for r in report["rows"]:
        p, s = r["psnr_vs_encoder_db"], r["psnr_vs_source_db"]
        table.add_row(r["decode"], *(f"{p[k]:.2f}" for k in ("mean", "min", "first_p", "last")),
                      f"{100 * r['identical_pixels']:.2f}%", str(r["max_abs_diff"]),
                      f"{s['decoder']:.2f} / {s['encoder']:.2f}")
    return table



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.drift", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("source", nargs="?", type=Path, help="video file (default: the built-in demo clip)")
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--size", type=parse_size, default=(640, 360), help="size of the built-in clip")
    ap.add_argument("--max-side", type=int, default=640, help="downscale a SOURCE so its longer side is at most N")
    ap.add_argument("--gop", type=int, default=-1, help="intra period; -1: only the first frame is intra")
    ap.add_argument("--quality", type=float, default=0.5)
    ap.add_argument("--model", default="nc-starter")
    ap.add_argument("--encode", type=_setting, default=("cpu", "fp32"), metavar="DEVICE:PRECISION",
                    help=f"DEVICE: cpu, cuda, cuda:N (or {OTHER_KERNELS} for --decode)")
    ap.add_argument("--decode", type=_setting, nargs="+", metavar="DEVICE:PRECISION",
                    default=[("cpu", "fp32"), ("cpu", "bf16"), ("cuda", "fp32"), ("cuda", "fp16")])
    ap.add_argument("--out", type=Path, default=Path("drift.json"))
    args = ap.parse_args(argv)
    if not _available(args.encode[0]):
        print(f"error: cannot encode on {args.encode[0]}: no CUDA device", file=sys.stderr)
        return 2
    w, h = args.size
    try:
        if args.source is None:
            frames = demo_clip(w, h, args.frames)
        else:
            frames = load_clip(args.source, args.frames, max_side=args.max_side)[0]
        report = drift(frames, model=args.model, quality=args.quality, gop=args.gop,
                       encode=args.encode, decode=args.decode)
    except NeurocodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report["environment"] = environment(args.encode[0])
    report["source"] = str(args.source or "neurocodec.synthetic.demo_clip")
    args.out.write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(_table(report))
    if report["skipped"]:
        console.print(f"skipped (no such device here): {', '.join(report['skipped'])}")
    console.print(f"details in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
