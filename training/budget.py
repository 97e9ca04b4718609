"""Fit a config's stage steps to a wall-clock budget, from a short timed probe.

    python -m training.budget CONFIG --seconds 300 --out FITTED.json -- --init nc-starter --amp
    python -m training.budget CONFIG --seconds 300 --out FITTED.json --times EARLIER/log.jsonl

Runs every stage of CONFIG for ``--probe`` steps (a throwaway run in a
temporary folder, with the ``training.train`` options after ``--``), reads
each stage's time per step from its log, and writes FITTED.json: CONFIG
with every stage's steps scaled by one factor so that the run's steps take
``--seconds``. Stages keep their proportions and learning-rate schedules
their shape. ``--times`` reads the step times from an earlier run's log on
the same hardware instead of probing (a probe costs about 30 s of a lease,
mostly kernel tuning). Made for leased machines (a GPU for a few minutes), where the
step time is unknown until the machine is there. The fitted file is an
ordinary config: kept with the weights, it reruns without a probe.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from . import train

#: probe steps left out of the timing: the first steps tune kernels and warm caches
WARM_STEPS = 3


def step_times(log: Path) -> dict[str, float]:
    """Seconds per step of each stage in a run's ``log.jsonl`` (logged every step), warm-up left out."""
    by_stage: dict[str, list[tuple[int, float]]] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        by_stage.setdefault(rec["stage"], []).append((rec["step"], rec["elapsed_s"]))
    times = {}
    for stage, recs in by_stage.items():
        warm = [r for r in recs if r[0] >= WARM_STEPS - 1]
        if len(warm) < 2:
            raise ValueError(f"stage {stage}: too few probe steps to time (need > {WARM_STEPS})")
        (s0, e0), (s1, e1) = warm[0], warm[-1]
        times[stage] = (e1 - e0) / (s1 - s0)
    return times


def fit(raw: dict, times: dict[str, float], seconds: float) -> dict:
    """``raw`` (a config as JSON) with all stage steps scaled to take ``seconds`` at ``times``."""
    planned = sum(s["steps"] * times[s["name"]] for s in raw["stages"])
    k = seconds / planned
    return {**raw, "stages": [{**s, "steps": max(1, round(k * s["steps"]))} for s in raw["stages"]]}


def probe(raw: dict, steps: int, train_args: list[str]) -> dict[str, float]:
    """Step times of a throwaway run of every stage of ``raw`` for ``steps`` steps."""
    with tempfile.TemporaryDirectory() as tmp:
        probe_cfg = Path(tmp) / "probe.json"
        probe_cfg.write_text(json.dumps({**raw, "log_every": 1, "ckpt_every": 10**9,
                                         "stages": [{**s, "steps": steps} for s in raw["stages"]]}))
        train.main([str(probe_cfg), "--out", str(Path(tmp) / "run"), *train_args])
        return step_times(Path(tmp) / "run" / "log.jsonl")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--seconds", type=float, required=True, help="time the fitted run's steps may take")
    ap.add_argument("--out", type=Path, required=True, help="fitted config (JSON)")
    ap.add_argument("--probe", type=int, default=10, help="steps per stage in the probe")
    ap.add_argument("--times", type=Path, help="log.jsonl of an earlier run on the same hardware: no probe")
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # what follows -- goes to training.train
    args, train_args = ap.parse_args(argv[:cut]), argv[cut + 1:]
    if args.probe <= WARM_STEPS:
        ap.error(f"--probe must be over {WARM_STEPS}")

    raw = json.loads(args.config.read_text())
    if args.times is not None:
        times = step_times(args.times)
        missing = [s["name"] for s in raw["stages"] if s["name"] not in times]
        if missing:
            ap.error(f"{args.times} has no steps of stage(s) {', '.join(missing)}")
    else:
        times = probe(raw, args.probe, train_args)
    fitted = fit(raw, times, args.seconds)
    args.out.write_text(json.dumps(fitted, indent=2) + "\n")
    for s in fitted["stages"]:
        print(f"{s['name']:7s} {times[s['name']] * 1000:7.1f} ms/step -> {s['steps']} steps")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
