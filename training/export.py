"""Turn a training checkpoint into shipped weights plus a model card.

    python -m training.export runs/starter/ckpt.pt --name nc-starter

Writes ``neurocodec/weights/NAME.safetensors`` (entropy tables rebuilt,
convolution kernels in float16) and ``NAME.md``, the model card: data,
stages, steps, hardware and wall time, read from the checkpoint itself.
Rate-distortion results belong in the card too; they are measured by
``eval/`` on held-out clips, which needs the exported weights, and pasted in
afterwards: given a weights file instead of a checkpoint, export rewrites the
card alone from the record inside the file (the weights stay as they are):

    python -m training.export neurocodec/weights/nc-starter.safetensors --name nc-starter --results rd.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neurocodec.models import ModelConfig, VideoModel
from neurocodec.zoo import WEIGHTS_DIR, load_model, save_model

from .data import VALIDATION_CLIPS
from .train import TrainConfig, rerun_args, run_record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="a run's ckpt.pt, or weights (.safetensors) to re-card")
    ap.add_argument("--name", required=True, help="model name to register and write")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--results", type=Path, help="Markdown with measured RD results to append to the card")
    args = ap.parse_args(argv)
    path, digest = export(args.checkpoint, args.name, args.out, args.results)
    print(f"wrote {path} ({digest})")


def export(checkpoint: Path, name: str, out: Path = WEIGHTS_DIR, results: Path | None = None) -> tuple[Path, str]:
    """Write ``OUT/NAME.safetensors`` and its card ``OUT/NAME.md``; return the weights' path and hash.
    From a weights file, write the card only."""
    if checkpoint.suffix == ".safetensors":
        model = load_model(checkpoint)
        path, digest, runs = checkpoint, model.weight_hash, model.history
        config = json.loads(Path(runs[-1]["config_path"]).read_text()) if runs else {}
    else:
        ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = ck["config"]
        model = VideoModel(ModelConfig(**config.get("model", {})))
        model.load_state_dict(ck["model"], strict=False)
        if ck.get("ema"):  # stopped inside a stage that averages its weights: its average so far
            model.load_state_dict(ck["ema"], strict=False)
        model.eval().update()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.safetensors"
        runs = ck.get("history", []) + [run_record(ck)]
        digest = save_model(model, path, name, training=json.dumps(runs))
        path.chmod(0o644)
    total_min = sum(r["elapsed"] for r in runs) / 60
    # the frame cache lists the clips trained on; runs that read packed clips (a GPU lease's upload)
    # have their cache on that machine, and packed clips are the same training clips, so the
    # default cache of ../shared/video stands in
    caches = [Path(config.get("cache_dir", TrainConfig.cache_dir)), Path(TrainConfig.cache_dir)]
    clips_file = next((c / "clips.json" for c in caches if (c / "clips.json").exists()), None)
    clips = json.loads(clips_file.read_text()) if clips_file else ["(cache list not found)"]
    params = sum(p.numel() for p in model.parameters())
    card = [
        f"# {name}",
        "",
        f"- weights: `{path.name}`, {path.stat().st_size / 2**20:.1f} MiB, weight hash `{digest}`",
        f"- architecture: {params / 1e6:.2f} M parameters, config `{model.config.to_json()}`",
        f"- training: {total_min:.0f} min of training steps in {len(runs)} run(s)",
        f"- training data: {len(clips)} clips of `../shared/video`: {', '.join(clips)}",
        f"- held out (never trained on): {', '.join(VALIDATION_CLIPS)}",
        "",
        "## How it was made",
        "",
        f"`python -m training.replay {name}` runs these commands in order, reading them from the weights file,",
        "and checks each exported parent against the weight hash recorded here.",
        "",
    ]
    for k, run in enumerate(runs):
        parent = ""
        if k and run.get("init_hash"):  # the parent was shipped weights: export it as it was then
            folder = f"runs/{name}-{k - 1}"
            parent = (f"`python -m training.export {folder}/ckpt.pt --name {name} --out {folder}` "
                      f"(weights {run['init_hash']} then), then\n   ")
        if "batch" not in run and Path(run["config_path"]).is_file():  # older records: their config says
            run = {**run, **{k: v for k, v in json.loads(Path(run["config_path"]).read_text()).items()
                             if k in ("batch", "crop")}}
        batch = f", batch {run['batch']} of {run['crop']}x{run['crop']}" if run.get("batch") else ""
        card.append(f"{k + 1}. {parent}`python -m training.train {' '.join(rerun_args(run, k, name))}` "
                    f"({run['elapsed'] / 60:.0f} min on {run['hardware']}{batch}):")
        card.extend(f"   - {s['name']}: {s['steps']} steps, {s['frames']} frames per sequence, lr {s['lr']}"
                    + (f", lambda x{s['lambda_scale']:g}" if s.get("lambda_scale", 1.0) != 1.0 else "")
                    + (f", drift {s['drift']:g}" if s.get("drift") else "")
                    + (f", flow teacher {s['flow_hint']:g}" if s.get("flow_hint") else "")
                    + (", P-frames at the encoder's quality offsets" if s.get("p_offsets") else "")
                    + (f", weights averaged (EMA, decay {s['ema']:g})" if s.get("ema") else "")
                    for s in run["stages"])
    card.append(f"{len(runs) + 1}. `python -m training.export runs/{name}-{len(runs) - 1}/ckpt.pt --name {name}`")
    if results:
        card += ["", results.read_text().strip()]
    (out / f"{name}.md").write_text("\n".join(card) + "\n")
    return path, digest


if __name__ == "__main__":
    main()
