"""Turn a training checkpoint into shipped weights plus a model card.

    python -m training.export runs/starter/ckpt.pt --name nc-starter

Writes ``neurocodec/weights/NAME.safetensors`` (entropy tables rebuilt,
convolution kernels in float16) and ``NAME.md``, the model card: data,
stages, steps, hardware and wall time, read from the checkpoint itself.
Rate-distortion results belong in the card too; they are measured by
``eval/`` on held-out clips and pasted in with ``--results FILE.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neurocodec.models import ModelConfig, VideoModel
from neurocodec.zoo import WEIGHTS_DIR, save_model

from .data import VALIDATION_CLIPS
from .train import TrainConfig, run_record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", required=True, help="model name to register and write")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--results", type=Path, help="Markdown with measured RD results to append to the card")
    args = ap.parse_args(argv)

    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    model = VideoModel(ModelConfig(**cfg.get("model", {})))
    model.load_state_dict(ck["model"], strict=False)
    model.eval().update()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.safetensors"
    runs = ck.get("history", []) + [run_record(ck)]
    total_min = sum(r["elapsed"] for r in runs) / 60
    digest = save_model(model, path, args.name, training=json.dumps(runs))
    path.chmod(0o644)
    clips_file = Path(cfg.get("cache_dir", "data/cache")) / "clips.json"
    clips = json.loads(clips_file.read_text()) if clips_file.exists() else ["(cache list not found)"]
    params = sum(p.numel() for p in model.parameters())
    card = [
        f"# {args.name}",
        "",
        f"- weights: `{path.name}`, {path.stat().st_size / 2**20:.1f} MiB, weight hash `{digest}`",
        f"- architecture: {params / 1e6:.2f} M parameters, config `{model.config.to_json()}`",
        f"- training: {total_min:.0f} min of training steps in {len(runs)} run(s)",
        f"- training data: {len(clips)} clips of `../shared/video`: {', '.join(clips)}",
        f"- held out (never trained on): {', '.join(VALIDATION_CLIPS)}",
        "",
        "## How it was made",
        "",
    ]
    for k, run in enumerate(runs):
        init = f" --init {run.get('init') or f'runs/{args.name}-{k - 1}/ckpt.pt'}" if k else ""
        stop = f" --stop-after {run['stop_after']}" if run.get("stop_after") else ""
        video_dir = run.get("video_dir", TrainConfig.video_dir)
        data = f" --video-dir {video_dir}" if video_dir != TrainConfig.video_dir else ""
        amp = " --amp" if run.get("amp") else ""
        parent = f", `{run['init']}` being weights {run['init_hash']}" if run.get("init_hash") else ""
        batch = f", batch {run['batch']} of {run['crop']}x{run['crop']}" if run.get("batch") else ""
        card.append(f"{k + 1}. `python -m training.train {run['config_path']} --out runs/{args.name}-{k}"
                    f"{init}{stop}{data}{amp}` "
                    f"({run['elapsed'] / 60:.0f} min on {run['hardware']}{batch}{parent}):")
        card += [f"   - {s['name']}: {s['steps']} steps, {s['frames']} frames per sequence, lr {s['lr']}"
                 + (f", lambda x{s['lambda_scale']:g}" if s.get("lambda_scale", 1.0) != 1.0 else "")
                 + (f", drift {s['drift']:g}" if s.get("drift") else "")
                 + (f", flow teacher {s['flow_hint']:g}" if s.get("flow_hint") else "")
                 for s in run["stages"]]
    card.append(f"{len(runs) + 1}. `python -m training.export runs/{args.name}-{len(runs) - 1}/ckpt.pt "
                f"--name {args.name}`")
    if args.results:
        card += ["", args.results.read_text().strip()]
    (args.out / f"{args.name}.md").write_text("\n".join(card) + "\n")
    print(f"wrote {path} ({digest})")


if __name__ == "__main__":
    main()
