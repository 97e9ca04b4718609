#!/usr/bin/env bash
# One leased GPU, one command: the GPU checks (speed, cross-device determinism,
# drift), then fine-tuning of the shipped model for whatever time is left.
#
# A lease here is minutes long and its machine starts bare, with a 64 MiB
# upload: so everything runs in one call, within BUDGET seconds of wall time,
# and all it measures comes back as two files in $OUT (logs.tar.gz, ckpt.pt).
#
# Prepare on this machine (README, "Training on a leased GPU"):
#   python -m training.pack ../shared/video --out .gpu/clips --max-frames 48 --crf 17  (fits 64 MiB)
#   cp ../shared/video/skate_parkour.mp4 .gpu/
#   .whl/: the av and pytorch-msssim wheels for CPython 3.12, compressai's sdist
# Then run there, carrying .whl and .gpu:  BUDGET=560 bash training/gpu_session.sh
#
# Two calls, one run: a lease's per-command limit is shorter than its device time, and a warm
# machine keeps its files. With LATER=S the first call fits the run's steps to its own time plus S
# seconds more and brings back only the checkpoint; the next call, RESUME=1 BUDGET=..., on the same
# warm machine, resumes that run (optimizer state, schedule and data order, exactly), takes it
# through its final low-rate steps and wraps up (export, drift of the new weights).
set -u
START=$(date +%s)
BUDGET=${BUDGET:-560}
OUT=${OUT:-/tmp/gpu-session}
CONFIG=${CONFIG:-training/configs/gpu.json}  # a tiny one and CUDA=0 make a dry run on CPU
CUDA=${CUDA:-1}
BENCH=${BENCH:-1}   # 0: no speed benchmark (the weights' architecture was benchmarked already)
# a log.jsonl of an earlier run on this very machine spares the ~30 s probe
TIMES=${TIMES:-}
LATER=${LATER:-0}    # seconds of steps a RESUME=1 call will add to this run
RESUME=${RESUME:-0}  # 1: continue the first call's run on the same warm machine, then wrap up
LOGS=/tmp/gpu-logs  # tarred into $OUT: a lease returns at most 8 files
# seconds kept after training: checkpoint and export (~20 s on an H200), the drift of the new weights
# (more than 40 s: the 37 s a 75 s wrap-up left it measured nothing), packing; a first call of two
# only saves its checkpoint
WRAP_UP=${WRAP_UP:-$([ "$LATER" -gt 0 ] && echo 25 || echo 100)}
mkdir -p "$OUT" "$LOGS"
left() { echo $((BUDGET - $(date +%s) + START)); }
stamp() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$LOGS/timeline.txt"; }
pack() { tar czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null; }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
use_built() { export PYTHONPATH=$PWD:$(echo /tmp/cai/compressai-*):/tmp/site; }  # after the setup below
TRAIN_ARGS=(--init nc-starter --video-dir .gpu/clips --amp)
DRIFT=(.gpu/skate_parkour.mp4 --frames 96 --gop -1)
# The fitted run, started or resumed, until WRAP_UP seconds are left; $1: its log. --time-limit
# checkpoints at the first step past the limit, so a run slower than fitted still brings back every
# step; the timeout behind it only guards against a hang.
train() {
    local limit=$(( $(left) - WRAP_UP ))
    stamp "training for $limit s at most ($1)"
    timeout -s INT $(( limit + 30 )) python3 -m training.train training/configs/gpu-fitted.json \
        --out runs/gpu "${TRAIN_ARGS[@]}" --time-limit $limit > "$LOGS/$1" 2>&1
}

if [ "$RESUME" = 1 ]; then
    use_built
    train train-resumed.txt
else
stamp "setup: wheels, and compressai's extensions built from its sdist (no cp312 wheel offline)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    > "$LOGS/setup.txt" 2>&1 || { cat "$LOGS/setup.txt"; exit 1; }
mkdir -p /tmp/cai && tar xzf .whl/compressai-*.tar.gz -C /tmp/cai
(cd /tmp/cai/compressai-* && python3 setup.py -q build_ext --inplace --parallel 4) >> "$LOGS/setup.txt" 2>&1 \
    || { tail -20 "$LOGS/setup.txt"; exit 1; }
use_built
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
python3 -c "import torch, neurocodec, compressai, av; assert torch.cuda.is_available() or not $CUDA
print(torch.__version__, compressai.__version__, av.__version__)" >> "$LOGS/setup.txt" 2>&1 || { cat "$LOGS/setup.txt"; exit 1; }

stamp "frame cache of the packed training clips"
python3 -c "from pathlib import Path; from training.data import build_cache, training_clips
build_cache(training_clips(Path('.gpu/clips')), Path('data/cache-gpu'), workers=16)" > "$LOGS/cache.txt" 2>&1

if [ "$BENCH" = 1 ]; then
    stamp "speed benchmark, GPU alone (eval.bench): fp16, serial and with entropy workers (encode and decode)"
    # name precision entropy-workers sizes...: fp16 is the fast GPU precision (bf16/fp32 measured 2026-11-26)
    for run in "fp16 fp16 0 640x360 1280x720 1920x1080" "fp16-ew12 fp16 12 640x360 1280x720 1920x1080" \
               "fp16-ew6 fp16 6 1920x1080"; do
        set -- $run
        name=$1 p=$2 pw=$3
        shift 3
        timeout 100 python3 -m eval.bench --device cuda --precision $p --entropy-workers $pw --sizes "$@" \
            --frames 48 --warmup 4 --out "$LOGS/bench-cuda-$name.json" > "$LOGS/bench-cuda-$name.txt" 2>&1
        tail -4 "$LOGS/bench-cuda-$name.txt" | head -1
    done
fi
pack

# No TIMES by default: the second H200 lease, fitted from the first one's log, ran its steps
# 1.2-1.35x slower than that log (another machine of the same kind) and was cut in its last stage.
stamp "step times (${TIMES:-probe}), steps fitted to the time left"
# on the H200 (2026-11-26) the probe took 33 s and the trainer 14 s to start; 10% margin for
# the checks run beside it (that lease's 15% left 100 s of its 555 unused)
STARTUP=$([ -n "$TIMES" ] && echo 17 || echo 50)
SECONDS_FOR_STEPS=$(( ($(left) - WRAP_UP - STARTUP) * 9 / 10 + LATER ))
python3 -m training.budget "$CONFIG" --seconds $SECONDS_FOR_STEPS --out training/configs/gpu-fitted.json \
    ${TIMES:+--times "$TIMES"} -- "${TRAIN_ARGS[@]}" > "$LOGS/budget.txt" 2>&1
cp training/configs/gpu-fitted.json "$LOGS/" 2>/dev/null
tail -6 "$LOGS/budget.txt"

train train.txt &
TRAIN=$!

stamp "determinism tests on CUDA, drift of the shipped weights (beside training)"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_determinism.py > "$LOGS/pytest-cuda.txt" 2>&1
tail -3 "$LOGS/pytest-cuda.txt"
timeout 150 python3 -m eval.drift "${DRIFT[@]}" --decode cpu:fp32 cuda:fp32 cuda:fp16 cuda:bf16 \
    --out "$LOGS/drift-shipped-cpu-encode.json" > "$LOGS/drift-shipped-cpu-encode.txt" 2>&1
timeout 100 python3 -m eval.drift "${DRIFT[@]}" --encode cuda:fp16 --decode cpu:fp32 cuda:fp16 \
    --out "$LOGS/drift-shipped-cuda-encode.json" > "$LOGS/drift-shipped-cuda-encode.txt" 2>&1
pack
wait $TRAIN
fi
stamp "training ended (exit $?)"
cp runs/gpu/log.jsonl "$LOGS/train-log.jsonl"

stamp "checkpoint without optimizer state, kernels float16 (as export rounds them): under 16 MiB"
python3 -c "import torch; ck = torch.load('runs/gpu/ckpt.pt', map_location='cpu', weights_only=False)
ck['opt'] = None
ck['model'] = {k: v.half() if v.dim() == 4 and k.endswith('.weight') else v for k, v in ck['model'].items()}
torch.save(ck, '$OUT/ckpt.pt'); print(ck['stage_idx'], ck['step'], round(ck['elapsed']))" 2>&1 | tee "$LOGS/ckpt.txt"
if [ "$LATER" -gt 0 ]; then stamp "done (the run goes on in a RESUME=1 call)"; pack; exit 0; fi
python3 -m training.export runs/gpu/ckpt.pt --name nc-gpu --out /tmp/weights > "$LOGS/export.txt" 2>&1
stamp "drift of the new weights"
timeout $(( $(left) - 5 )) python3 -m eval.drift "${DRIFT[@]}" --model /tmp/weights/nc-gpu.safetensors \
    --decode cpu:fp32 cuda:fp32 cuda:fp16 cuda:bf16 --out "$LOGS/drift-new.json" > "$LOGS/drift-new.txt" 2>&1
stamp done
pack
