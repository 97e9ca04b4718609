"""Rerun the training chain that made shipped weights, from the record inside the weights file.

    python -m training.replay nc-starter             # every run, then export to runs/nc-starter.safetensors
    python -m training.replay nc-starter --dry-run   # print the commands, run nothing

Export writes into each weights file the runs that made it: config, the steps
each run actually ran, data folder, mixed precision, and the weight hash of a
parent that was shipped weights. The model card prints that record as
commands; this runs them, in order, into ``runs/NAME-0`` ... ``runs/NAME-K``,
each run started from the one before, and exports the last under ``runs/``
(never over the shipped file). After an interruption, rerun the same command:
finished runs are skipped and the unfinished one resumes exactly from its
checkpoint.

Where the chain went through shipped weights, the replay exports the run
before as it was shipped then and compares weight hashes with the record, so
a replay says where it left the original. On one machine and torch build, CPU
training is deterministic; runs that were trained on a GPU, another torch,
or code changed since the run give other weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neurocodec.errors import NeurocodecError
from neurocodec.zoo import load_model

from . import train
from .export import export


def problems(runs: list[dict]) -> list[str]:
    """What keeps the recorded runs from rerunning here, found before hours of training, not after."""
    found = []
    for k, run in enumerate(runs):
        path = Path(run.get("config_path") or "")
        if not path.is_file():
            found.append(f"run {k + 1}: config {path} is not here (run from the repository root)")
            continue
        config = json.loads(path.read_text())
        stages, recorded = config.get("stages", []), run["stages"]
        if run.get("stop_after"):  # a time-boxed run: whole stages, then part of one
            same = 0 < len(recorded) <= len(stages) and recorded[:-1] == stages[: len(recorded) - 1] \
                and recorded[-1] == {**stages[len(recorded) - 1], "steps": recorded[-1]["steps"]}
        else:
            same = recorded == stages
        if not same or any(run.get(key) not in (None, config.get(key)) for key in ("batch", "crop")):
            found.append(f"run {k + 1}: {path} no longer says what the run trained (stages, batch or crop changed)")
        videos = Path(run.get("video_dir") or config.get("video_dir", train.TrainConfig.video_dir))
        if not videos.is_dir():
            # the leases packed at x265 CRF 16 (runs 7, 11, 12) or 17 (from run 14): the card says which
            hint = (" (pack it: python -m training.pack ../shared/video --out .gpu/clips --max-frames 48"
                    " --crf CRF, CRF as the model card's notes give for this run)"
                    if videos == Path(".gpu/clips") else "")
            found.append(f"run {k + 1}: its videos, {videos}, are not here{hint}")
    return found


def steps_done(ckpt: Path) -> int:
    """Training steps a run folder's checkpoint holds (0 without one)."""
    if not ckpt.is_file():
        return 0
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    return sum(s["steps"] for s in ck["config"]["stages"][: ck["stage_idx"]]) + ck["step"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model name or .safetensors file whose training to rerun")
    ap.add_argument("--runs-dir", default="runs", help="where the run folders and the exported weights go")
    ap.add_argument("--device", help="training device (default: cuda when there is one)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and check their inputs only")
    args = ap.parse_args(argv)

    try:
        model = load_model(args.model)
    except NeurocodecError as e:
        raise SystemExit(str(e)) from e
    runs, name = model.history, model.name
    if not runs:
        raise SystemExit(f"{args.model} records no training runs: nothing to replay")
    found = problems(runs)
    for line in found:
        print(line)
    if found and not args.dry_run:
        raise SystemExit(f"cannot replay {args.model}: {len(found)} problem(s) above")
    device = ["--device", args.device] if args.device else []
    folder = Path(args.runs_dir)

    for k, run in enumerate(runs):
        run_argv = train.rerun_args(run, k, name, args.runs_dir)
        target = sum(s["steps"] for s in run["stages"])
        done = 0 if args.dry_run else steps_done(folder / f"{name}-{k}" / "ckpt.pt")
        if done >= target:
            print(f"run {k + 1}: finished ({done} steps)")
            continue
        if k and run.get("init_hash"):
            parent = folder / f"{name}-{k - 1}"
            print(f"run {k + 1}: python -m training.export {parent}/ckpt.pt --name {name} --out {parent}")
            if not args.dry_run:
                _, digest = export(parent / "ckpt.pt", name, parent)
                verdict = "the same" if digest == run["init_hash"] else f"the original was {run['init_hash']}"
                print(f"  parent weights {digest}: {verdict}")
        if done and run.get("stop_after"):  # resuming a time-boxed run: only the steps it has left
            run_argv[run_argv.index("--stop-after") + 1] = str(target - done)
        print(f"run {k + 1}: python -m training.train {' '.join(run_argv)}")
        if not args.dry_run:
            train.main(run_argv + device)

    last = folder / f"{name}-{len(runs) - 1}"
    print(f"export: python -m training.export {last}/ckpt.pt --name {name} --out {folder}")
    if args.dry_run:
        return
    path, digest = export(last / "ckpt.pt", name, folder)
    verdict = "reproduced exactly" if digest == model.weight_hash else f"the original is {model.weight_hash}"
    print(f"wrote {path}: weights {digest}, {verdict}")


if __name__ == "__main__":
    main()
