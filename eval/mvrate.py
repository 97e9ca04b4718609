"""Tune the encoder: RD curves of the same weights at several ``MV_RATE``, ``MV_REFINE`` and P-frame offsets.

    python -m eval.mvrate ../shared/video/juggle.mp4 --rates 0 2 4 8 --frames 32
    python -m eval.mvrate ../shared/video/juggle.mp4 --rates 4 --passes 0 1 2
    python -m eval.mvrate ../shared/video/juggle.mp4 --pattern 0 --pattern=-0.1,-0.1,-0.1,0.15

The block-vector choice (:func:`neurocodec.models.motion.choose_vectors`,
:func:`~neurocodec.models.motion.refine_vectors`) and the P-frames' quality
offsets (:data:`neurocodec.codec.P_OFFSETS`) are encoder-side only: every
setting makes streams the shipped decoder reads, so they are tuned by measuring,
not trained. Tune on training clips; held-out clips are for the result. Prints,
per clip, bpp and PSNR-YUV at each quality for each setting (every rate with
every number of passes and every pattern), and each setting's BD-rate against
the first.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from neurocodec.codec import P_OFFSETS, check_offsets, offsets_text
from neurocodec.errors import InputError
from neurocodec.models import motion
from neurocodec.zoo import DEFAULT_MODEL, load_model

from .bdrate import bd_rate
from .rd import evaluate_neurocodec, load_clip, log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--rates", type=float, nargs="+", default=[motion.MV_RATE],
                    help="MV_RATE values (default: the shipped one)")
    ap.add_argument("--passes", type=int, nargs="+", default=[motion.MV_REFINE], help="MV_REFINE values")
    ap.add_argument("--pattern", type=_offsets, action="append", dest="patterns",
                    help="P-frame quality offsets, comma-separated (0: every frame at its quality; write "
                         "--pattern=-0.1,0.1 when the first is negative); repeat for several (default: P_OFFSETS)")
    ap.add_argument("--span", type=float, default=motion.MV_RATE_SPAN, help="MV_RATE_SPAN")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--intra-period", type=int, default=32)
    ap.add_argument("--qualities", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--out", type=Path, help="write every point as JSON here")
    args = ap.parse_args(argv)

    args.patterns = args.patterns or [P_OFFSETS]
    model = load_model(args.model)
    motion.MV_RATE_SPAN = args.span
    settings = list(itertools.product(args.rates, args.passes, args.patterns))
    points, gains = [], {s: [] for s in settings[1:]}
    for clip in args.clips:
        frames, fps, _ = load_clip(clip, args.frames, max_side=args.max_side)
        curves = {}
        for rate, passes, pattern in settings:
            motion.MV_RATE, motion.MV_REFINE = rate, passes
            curve = []
            for q in args.qualities:
                p = evaluate_neurocodec(frames, model, q, intra_period=args.intra_period, fps=fps,
                                        sequence=Path(clip).stem, with_ms_ssim=False, p_offsets=pattern)
                curve.append((p.bpp, p.psnr_yuv))
                points.append({"clip": Path(clip).stem, "mv_rate": rate, "mv_refine": passes, "span": args.span,
                               "p_offsets": list(pattern), "quality": q, "bpp": p.bpp, "psnr_yuv": p.psnr_yuv})
                log(f"{Path(clip).stem} MV_RATE={rate:g} MV_REFINE={passes} P {offsets_text(pattern)} q={q:g}: "
                    f"{p.bpp:.4f} bpp, {p.psnr_yuv:.2f} dB")
            curves[rate, passes, pattern] = curve
        anchor = curves[settings[0]]
        print(f"{Path(clip).stem} ({frames.shape[2]}x{frames.shape[1]}, {len(frames)} frames)")
        for setting, curve in curves.items():
            bd = bd_rate(*zip(*anchor, strict=True), *zip(*curve, strict=True)) if setting != settings[0] else None
            if bd is not None:
                gains[setting].append(bd.value)
            cells = "  ".join(f"{b:.4f}/{q:.2f}" for b, q in curve)
            print(f"  MV_RATE {setting[0]:<5g} MV_REFINE {setting[1]} P {offsets_text(setting[2])} {cells}"
                  + (f"  BD-rate {bd.value:+.1f} %" if bd else "  (anchor)"))
    for (rate, passes, pattern), values in gains.items():
        print(f"MV_RATE {rate:g} MV_REFINE {passes} P {offsets_text(pattern)}: "
              f"mean BD-rate {np.nanmean(values):+.1f} % over {len(values)} clip(s)")
    if args.out:
        args.out.write_text(json.dumps(points, indent=1))
    return 0


def _offsets(text: str) -> tuple[float, ...]:
    try:
        return check_offsets(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


if __name__ == "__main__":
    raise SystemExit(main())
