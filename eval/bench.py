"""Speed and memory benchmark: encode/decode fps, per-frame latency, per-stage times, peak memory.

``python -m eval.bench [--sizes 640x360 1280x720 1920x1080] [--frames 8] [--warmup 2]
[--device cpu|cuda] [--model nc-starter] [--threads N] [--entropy-workers N] [--quality 0.5] [--gop 32]
[--out bench.json]``

Content: :func:`neurocodec.synthetic.demo_clip` at each size (photographic,
with global and local motion), so the benchmark needs no files.

Method, per size: ``--warmup`` frames are first encoded and decoded with a
throw-away encoder/decoder (lazy initialisation, allocator growth, cuDNN
autotuning) and reported apart; then a fresh encoder codes ``--frames``
frames (an I-frame, then P-frames; an I-frame every ``--gop``) into an
in-memory .ncv stream, and a fresh decoder decodes it. fps = frames / total
wall time of that phase; latency = wall time of each frame's call.

Stages (summed per frame, from :mod:`neurocodec.profiling`'s marks in the codec):

* ``entropy``: rANS coding of the latents, with the symbol and index lists
  it needs;
* ``exact``: the integer entropy-parameter path (hyper-synthesis and scale
  head in fixed point, table choice), the price of cross-device determinism;
* ``search``: the encoder's block-matching motion search (models with
  ``motion_search``; the decoder never searches);
* ``io``: frame conversion (uint8 HWC <-> float tensor, device copies) plus
  bitstream serialisation (``StreamWriter.write``) or parsing
  (``StreamReader``);
* ``network``: everything else in the encode/decode call: the analysis and
  synthesis transforms, the float mean path, motion and warping.

With ``--entropy-workers N`` the rANS coding of the latents runs in N
processes (:mod:`neurocodec.parallel`) while the main process works on other
frames: ``entropy`` is then what the main process still spends on entropy
coding (the hyper-latents) plus its waits for the workers; a decoded frame's
time is the time between two frames out, and the encoder's flush is counted
in its last frame.

On CUDA the marks synchronise before and after each stage so that queued
kernels are charged to the stage that launched them; this adds a few
synchronisations per frame (the real pipeline syncs anyway when the rANS
coder pulls symbols to the CPU). Peak memory as in
:mod:`eval.measure`: peak RSS per phase on CPU, plus
``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.measure import PeakMemory, environment, parse_size, sync
from neurocodec import Decoder, Encoder, Packet, StreamReader, StreamWriter, load_model
from neurocodec.codec import PRECISIONS
from neurocodec.errors import NeurocodecError
from neurocodec.metrics import bits_per_pixel
from neurocodec.models import VideoModel
from neurocodec.parallel import EntropyPool
from neurocodec.profiling import Profile, profile, stage
from neurocodec.synthetic import demo_clip

__all__ = ["bench_size", "main"]

_STAGES = ("network", "search", "entropy", "exact", "io")


def _encode(frames: np.ndarray, model: VideoModel, timer: Profile, quality: float, gop: int,
            device: torch.device, precision: str, pool: EntropyPool | None) -> tuple[bytes, list[dict[str, Any]]]:
    """Encode into an in-memory .ncv; per-frame ``{type, total, <stage>}`` in ms (with a pool, the last
    frame's row includes the flush)."""
    h, w = frames.shape[1:3]
    enc = Encoder(w, h, model=model, quality=quality, gop=gop, frame_count=len(frames), device=device,
                  precision=precision, pool=pool)
    buf, rows, types = io.BytesIO(), [], {}
    with StreamWriter(buf, enc.header) as writer:
        for k, frame in enumerate(frames):
            timer.reset()
            sync(device)
            t0 = time.perf_counter()
            packets = enc.encode(frame)
            if k == len(frames) - 1:
                packets += enc.encode(None)
            sync(device)
            t1 = time.perf_counter()
            for p in packets:
                writer.write(p)
                types[p.pts] = p.frame_type.name
            t2 = time.perf_counter()
            rows.append(_row("", t0, t1, t2, timer, serial=t2 - t1))
    for k, row in enumerate(rows):  # with a pool, a frame's packet comes out a few frames later
        row["type"] = types[k]
    return buf.getvalue(), rows


def _decode(data: bytes, model: VideoModel, timer: Profile, device: torch.device,
            precision: str, pool: EntropyPool | None) -> list[dict[str, Any]]:
    rows = []
    reader = StreamReader(io.BytesIO(data))
    dec = Decoder(reader.header, model=model, device=device, precision=precision)
    if pool is not None:
        return _decode_pipelined(reader, dec, pool, timer, device)
    while True:
        timer.reset()
        t0 = time.perf_counter()
        packet = reader.read_packet()
        t1 = time.perf_counter()
        if packet is None:
            return rows
        dec.decode(packet)
        sync(device)
        t2 = time.perf_counter()
        rows.append(_row(packet.frame_type.name, t1, t2, t2, timer, serial=t1 - t0))


def _decode_pipelined(reader: StreamReader, dec: Decoder, pool: EntropyPool, timer: Profile,
                      device: torch.device) -> list[dict[str, Any]]:
    """As :func:`_decode`, packets parsed ahead by ``pool``: a frame's time is the time between two
    frames out; ``entropy`` is the wait for a parse; container parsing is inside the frame time."""
    rows: list[dict[str, Any]] = []
    types: list[str] = []

    def packets() -> Iterator[Packet]:
        while (packet := reader.read_packet()) is not None:
            types.append(packet.frame_type.name)
            yield packet

    timer.reset()
    t0 = time.perf_counter()
    for frame in pool.decode(dec, packets()):
        with stage("convert"):
            frame.cpu().numpy()  # a host frame, as Decoder.decode returns
        t1 = time.perf_counter()
        rows.append(_row(types[len(rows)], t0, t1, t1, timer, serial=0.0))
        timer.reset()
        t0 = t1
    return rows


def _row(ftype: str, t0: float, t1: float, t2: float, timer: Profile, serial: float) -> dict[str, Any]:
    """One frame's times in ms: the codec call spans t0..t1, ``serial`` is (de)serialisation."""
    call, t, ms = t1 - t0, timer.totals, 1000.0
    return {"type": ftype, "total_ms": (call + serial) * ms, "search_ms": t["search"] * ms,
            "entropy_ms": t["entropy"] * ms, "exact_ms": t["exact"] * ms, "io_ms": (t["convert"] + serial) * ms,
            "network_ms": max(call - sum(t.values()), 0.0) * ms}


def _summarise(rows: list[dict[str, Any]], warm: list[dict[str, Any]], wall_s: float,
               memory: dict[str, Any]) -> dict[str, Any]:
    lat = [r["total_ms"] for r in rows]
    by_type = {t: statistics.fmean(r["total_ms"] for r in rows if r["type"] == t)
               for t in ("I", "P") if any(r["type"] == t for r in rows)}
    stages = {k: statistics.fmean(r[f"{k}_ms"] for r in rows) for k in _STAGES}
    lat_sorted = sorted(lat)
    return {
        "fps": len(rows) / wall_s, "wall_s": wall_s,
        "latency_ms": {"mean": statistics.fmean(lat), "median": statistics.median(lat),
                       "p90": lat_sorted[min(len(lat) - 1, int(0.9 * len(lat)))], "max": max(lat),
                       **{f"{t}_mean": v for t, v in by_type.items()}},
        "stages_ms_per_frame": stages,
        "stage_share": {k: v / max(sum(stages.values()), 1e-12) for k, v in stages.items()},
        "warmup_latency_ms": [r["total_ms"] for r in warm],
        "memory": memory, "per_frame": rows,
    }


def bench_size(model: VideoModel, width: int, height: int, *, frames: int, warmup: int, quality: float,
               gop: int, device: torch.device, precision: str = "fp32",
               pool: EntropyPool | None = None) -> dict[str, Any]:
    """Warm up, then time encoding and decoding ``frames`` frames of the demo clip at one size.

    ``pool``: run the rANS coding in its worker processes (encode and decode).
    """
    clip = demo_clip(width, height, warmup + frames)
    with profile(device) as timer:
        warm_enc: list[dict[str, Any]] = []
        warm_dec: list[dict[str, Any]] = []
        if warmup:
            warm_data, warm_enc = _encode(clip[:warmup], model, timer, quality, gop, device, precision, pool)
            warm_dec = _decode(warm_data, model, timer, device, precision, pool)
        with PeakMemory(device) as mem_enc:
            t0 = time.perf_counter()
            data, enc_rows = _encode(clip[warmup:], model, timer, quality, gop, device, precision, pool)
            enc_s = time.perf_counter() - t0
        with PeakMemory(device) as mem_dec:
            t0 = time.perf_counter()
            dec_rows = _decode(data, model, timer, device, precision, pool)
            dec_s = time.perf_counter() - t0
    return {"size": [width, height], "frames": frames, "warmup": warmup, "bytes": len(data),
            "bpp": bits_per_pixel(len(data), width, height, frames),
            "encode": _summarise(enc_rows, warm_enc, enc_s, mem_enc.result()),
            "decode": _summarise(dec_rows, warm_dec, dec_s, mem_dec.result())}


def _table(results: list[dict[str, Any]], cuda: bool) -> Any:
    from rich.table import Table

    table = Table(title="neurocodec speed (steady state, after warm-up)")
    for col in ("size", "enc fps", "enc ms I / P", "enc net/search/ent/exact/io %", "dec fps", "dec ms I / P",
                "dec net/search/ent/exact/io %", "peak RSS MiB enc/dec" + (" | CUDA" if cuda else "")):
        table.add_column(col, justify="right")
    for r in results:
        cells = [f"{r['size'][0]}x{r['size'][1]}"]
        for phase in ("encode", "decode"):
            s = r[phase]
            lat = s["latency_ms"]
            i_ms, p_ms = lat.get("I_mean", float("nan")), lat.get("P_mean", float("nan"))
            cells += [f"{s['fps']:.2f}", f"{i_ms:.0f} / {p_ms:.0f}",
                      "/".join(f"{100 * s['stage_share'][k]:.0f}" for k in _STAGES)]
        mem = f"{r['encode']['memory']['peak_rss_mib']:.0f} / {r['decode']['memory']['peak_rss_mib']:.0f}"
        if cuda:
            mem += f" | {r['encode']['memory']['cuda_peak_allocated_mib']:.0f} / " \
                   f"{r['decode']['memory']['cuda_peak_allocated_mib']:.0f}"
        table.add_row(*cells, mem)
    return table



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[(640, 360), (1280, 720), (1920, 1080)])
    ap.add_argument("--frames", type=int, default=8, help="measured frames per size")
    ap.add_argument("--warmup", type=int, default=2,
                    help="frames coded first and reported apart (>= 2 warms both the I- and the P-frame path)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--model", default="nc-starter", help="registered model name or a .safetensors file")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                    help="arithmetic of the transforms (bf16: fast on recent CPUs; fp16: GPUs)")
    ap.add_argument("--entropy-workers", type=int, default=0,
                    help="rANS coding in N worker processes, beside the networks (neurocodec.parallel)")
    ap.add_argument("--quality", type=float, default=0.5)
    ap.add_argument("--gop", type=int, default=32, help="intra period; -1: only the first frame is intra")
    ap.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results file")
    args = ap.parse_args(argv)
    if args.frames < 1 or args.warmup < 0 or args.entropy_workers < 0:
        ap.error("--frames must be >= 1, --warmup and --entropy-workers >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"CUDA requested but not available (torch {torch.__version__}, built with CUDA "
              f"{torch.version.cuda or 'none'}): nothing benchmarked. Use --device cpu.", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model, device=device)
        results = []
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(EntropyPool(args.entropy_workers)) if args.entropy_workers else None
            for w, h in args.sizes:
                print(f"benchmarking {w}x{h}: {args.warmup} warm-up + {args.frames} frames on {device}...",
                      file=sys.stderr, flush=True)
                results.append(bench_size(model, w, h, frames=args.frames, warmup=args.warmup,
                                          quality=args.quality, gop=args.gop, device=device,
                                          precision=args.precision, pool=pool))
    except NeurocodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = {"environment": environment(device), "model": getattr(model, "name", args.model),
              "weight_hash": getattr(model, "weight_hash", None), "quality": args.quality, "gop": args.gop,
              "precision": args.precision, "entropy_workers": args.entropy_workers,
              "content": "neurocodec.synthetic.demo_clip", "results": results}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)  # no squeezed table in logs
    console.print(_table(results, device.type == "cuda"))
    console.print(f"net/search/ent/exact/io = network / motion search / entropy coding / exact entropy parameters / "
                  f"conversion+serialisation share of frame time ({args.precision}); "
                  f"torch threads {torch.get_num_threads()}, entropy workers {args.entropy_workers}; "
                  f"details in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
