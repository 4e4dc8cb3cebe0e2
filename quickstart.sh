#!/usr/bin/env bash
# MotionDirector on the toy world, offline on a CPU (~1.5 minutes after installs): learn a new motion
# (zig-zag) from one bundled clip, generate a new subject doing it with and without the learned
# temporal LoRA (same prompt and seed), and score both against the reference clip: writes
# outputs/quickstart/scores.json, strip.png and the two videos. It needs a pretrained toy-world
# base (docs/toy_world.md): the shipped models/toy_world_base, or TOY_BASE=path.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q torch==2.13.0
fi
$PY -m pip install -q -r requirements.txt

BASE=${TOY_BASE:-models/toy_world_base}
if [ ! -f "$BASE/model_index.json" ]; then
  echo "no toy-world base at $BASE: pretrain one with python -m utils.toy_world pretrain $BASE --seed 0 --threads 2, or set TOY_BASE" >&2
  exit 2
fi
REFERENCE=test_data/toy_world/zigzag/single/blue_square_zigzag_20_32.mp4
PROMPT="a red circle zigzagging"
OUT=outputs/quickstart
mkdir -p "$OUT"
$PY MotionDirector_train.py --config configs/config_toy_world_single_video.yaml output_dir=$OUT/train pretrained_model_path="$BASE" \
  validation_data.sample_preview=false | tee "$OUT/train.log"
run_dir=$(sed -n 's/^run folder: //p' "$OUT/train.log" | tail -n 1)
common=(--model "$BASE" --prompt "$PROMPT" --checkpoint_folder "$run_dir" --checkpoint_index 600
        --width 64 --height 64 --num-frames 8 --num-steps 25 --guidance-scale 4 --seed 1 --device cpu --overwrite)
$PY MotionDirector_inference.py "${common[@]}" --output_dir $OUT/motiondirector
$PY MotionDirector_inference.py "${common[@]}" --lora_scale 0 --output_dir $OUT/base
$PY -m utils.toy_world compare "$REFERENCE" --prompt "$PROMPT" --base $OUT/base/a_red_circle_zigzagging_1.mp4 \
  --motiondirector $OUT/motiondirector/a_red_circle_zigzagging_1.mp4 --out-dir $OUT
