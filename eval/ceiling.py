"""Where the quality goes: the coded frames against the transforms' own ceiling.

``python -m eval.ceiling VIDEO [VIDEO ...] [--frames 4] [--qualities 0 0.5 1] [--max-side 640]
[--fit 0] [--model nc-starter] [--out ceiling.json]``

A learned codec loses quality in two places: in quantising the latent, which
more rate buys back, and in the transforms themselves, which no rate does.
This separates the two. Per clip and quality, the first ``--frames`` frames are
coded as one GOP (an I-frame, then P-frames at exactly that quality, each
referencing the decoder's previous reconstruction, as the encoder does), and
each frame is scored (PSNR-YUV against the source, as in :mod:`eval.rd`) three
ways:

- **coded**: the decoder's reconstruction, with the bpp of the frame's
  entropy-coded streams (packet framing left out);
- **unquantised**: the same synthesis fed the latent before quantisation (a
  P-frame over the same coded motion and reference): the ceiling of this
  encoder and decoder at infinite rate;
- **fitted** (``--fit N``): the best of N Adam steps on the latent for
  distortion alone, through the synthesis: what the decoder can draw at all,
  however good an analysis transform. Fitted above unquantised is the
  analysis transform's shortfall.

When the coded PSNR closes on the unquantised one as the quality rises, the
rate is no longer what limits the codec: the transforms are, and only training
(or larger transforms) moves them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.measure import environment
from eval.rd import load_clip
from neurocodec import load_model
from neurocodec.codec import frame_to_tensor, tensor_to_frame
from neurocodec.metrics import psnr_yuv420
from neurocodec.models import VideoModel, pad_to_stride, to_reference
from neurocodec.refine import Analysis, code_latent
from neurocodec.zoo import model_identity

__all__ = ["FIT_RATE", "ceiling", "fit_latent", "main"]

#: Adam step size of ``--fit``, in latent units: distortion alone tolerates
#: larger steps than :data:`neurocodec.refine.LEARNING_RATE`'s rate-distortion loss.
FIT_RATE = 0.05


def fit_latent(a: Analysis, x: torch.Tensor, steps: int, height: int, width: int) -> torch.Tensor:
    """The reconstruction, among ``a.y``'s and ``steps`` Adam iterates', closest to ``x`` (MSE over
    the ``height`` x ``width`` frame): how near the synthesis can get, whatever the rate."""
    target = x[..., :height, :width].float()
    with torch.enable_grad():
        v = a.y.detach().float().clone().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=FIT_RATE)
        best, best_loss = None, float("inf")
        for step in range(steps + 1):
            x_hat = a.synthesize(v)
            loss = F.mse_loss(x_hat[..., :height, :width].float(), target)
            if loss.item() < best_loss:
                best, best_loss = x_hat.detach(), loss.item()
            if step == steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    return best


def ceiling(frames: np.ndarray, model: VideoModel, quality: float, *, fit: int = 0) -> list[dict[str, Any]]:
    """One row per frame of ``frames`` (uint8 [T, H, W, 3], coded as one GOP at ``quality``):
    its type, coded bpp, and PSNR-YUV coded, unquantised and (``fit`` > 0) fitted."""
    h, w = frames.shape[1:3]
    q = torch.tensor([quality])
    rows, ref = [], None
    with torch.no_grad():  # not inference_mode: --fit differentiates through the synthesis
        for t, frame in enumerate(frames):
            x = pad_to_stride(frame_to_tensor(frame, w, h, torch.device("cpu")))
            # what compress does, keeping the analysis: one motion search and one analysis per frame
            if ref is None:
                side, a, prior = (), model.intra.analyse(x, q), model.intra.prior
            else:
                motion, a = model.inter.analyse(x, ref, q)
                side, prior = (motion,), model.inter.prior
            latent, x_hat = code_latent(a, prior, x)
            bits = 8 * sum(len(s) for c in (*side, latent) for s in c.streams())
            scored = {"coded": x_hat, "unquantised": a.synthesize(a.y)}
            if fit:
                scored["fitted"] = fit_latent(a, x, fit, h, w)
            row = {"frame": t, "type": "P" if ref is not None else "I", "bpp": bits / (w * h)}
            for name, rec in scored.items():
                row[name] = psnr_yuv420(tensor_to_frame(to_reference(rec.float()), w, h), frame)["yuv"]
            rows.append(row)
            ref = to_reference(x_hat.float())
    return rows


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.ceiling", description=__doc__.split("\n\n")[0])
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--frames", type=int, default=4, help="frames of one GOP: an I-frame, then P-frames")
    ap.add_argument("--qualities", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--max-side", type=int, default=640, help="downscale as eval.rd does (0: keep the size)")
    ap.add_argument("--fit", type=int, default=0, help="Adam steps of the fitted ceiling (0: skip it)")
    ap.add_argument("--model", default="nc-starter")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, help="write every row, and the environment, as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    digest = model_identity(model)[1]
    columns = ["coded", "unquantised"] + (["fitted"] if args.fit else [])
    print(f"model {args.model} ({digest}); PSNR-YUV, dB; P: mean over P-frames")
    print(f"{'clip':<24} {'q':>5} {'type':>4} {'bpp':>7} " + " ".join(f"{c:>11}" for c in columns))
    results = []
    for video in args.videos:
        clip, _, meta = load_clip(video, args.frames, max_side=args.max_side or None)
        for quality in args.qualities:
            rows = ceiling(clip, model, quality, fit=args.fit)
            results.append({"clip": Path(video).stem, "quality": quality, "size": meta["coded_size"],
                            "provenance": meta["provenance"], "frames": rows})
            for kind in ("I", "P"):
                sel = [r for r in rows if r["type"] == kind]
                if sel:
                    print(f"{Path(video).stem[:24]:<24} {quality:>5g} {kind:>4} {_mean(sel, 'bpp'):>7.4f} "
                          + " ".join(f"{_mean(sel, c):>11.2f}" for c in columns))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = ["python", "-m", "eval.ceiling", *(sys.argv[1:] if argv is None else argv)]
        args.out.write_text(json.dumps({"command": command, "model": args.model, "weight_hash": digest,
                                        "fit_steps": args.fit, "fit_rate": FIT_RATE,
                                        "environment": environment(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
