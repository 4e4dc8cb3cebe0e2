#!/usr/bin/env bash
# MotionDirector on the toy world, offline on a CPU (about 4 min on a 2-core VM, installs done): train on a zig-zag from
# one bundled clip ("a blue square moving right" that zigzags; the base draws "moving right" as any
# rightward path, straight or wiggling), with the temporal LoRA on the temporal convs too, then
# generate 4 new subjects x 2 seeds with and without the learned temporal LoRA (same prompts and
# seeds) and score them against the reference clip: writes outputs/quickstart/scores.json (the
# first pair's scores and a `summary` over all 8 pairs), strip.png (reference, then base and
# MotionDirector of the first two pairs) and the videos. It needs a pretrained toy-world base
# (docs/toy_world.md): the shipped models/toy_world_v2 (v2: a family of paths per caption), or
# TOY_BASE=path. On the shipped base 5 of the 8 new-subject videos follow the zig-zag, none of the
# base's (docs/toy_world.md, "The quick start").
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q torch==2.13.0
fi
$PY -m pip install -q -r requirements.txt

BASE=${TOY_BASE:-models/toy_world_v2}
if [ ! -f "$BASE/model_index.json" ]; then
  echo "no toy-world base at $BASE: see docs/toy_world.md (python -m utils.toy_world pretrain ...), or set TOY_BASE" >&2
  exit 2
fi
REFERENCE=test_data/toy_world/zigzag/single/blue_square_zigzag_20_32.mp4
OUT=outputs/quickstart
mkdir -p "$OUT"
# the experiment's first four new subjects: none shares the reference's colour or shape
printf '%s\n' "a red circle moving right" "a red triangle moving right" "a green circle moving right" \
  "a green triangle moving right" > "$OUT/prompts.txt"
# The temporal LoRA also on the temporal convs (the layers that see frame order; a zig needs them),
# trained 1200 steps: the recipe measured in docs/toy_world.md ("The zig-zag in the trainer").
STEPS=1200
$PY MotionDirector_train.py --config configs/config_toy_world_single_video.yaml output_dir=$OUT/train pretrained_model_path="$BASE" \
  "lora_layers.temporal=[attn1,attn2,ff,temp_convs]" max_train_steps=$STEPS checkpointing_steps=$STEPS validation_steps=$STEPS \
  validation_data.sample_preview=false | tee "$OUT/train.log"
run_dir=$(sed -n 's/^run folder: //p' "$OUT/train.log" | tail -n 1)
common=(--model "$BASE" --prompts_file "$OUT/prompts.txt" --checkpoint_folder "$run_dir" --checkpoint_index $STEPS
        --width 64 --height 64 --num-frames 8 --num-steps 25 --guidance-scale 4 --seed 0 --repeat_num 2 --device cpu --overwrite)
$PY MotionDirector_inference.py "${common[@]}" --output_dir $OUT/motiondirector
$PY MotionDirector_inference.py "${common[@]}" --lora_scale 0 --output_dir $OUT/base
videos=()
while read -r prompt; do
  for seed in 0 1; do videos+=("${prompt// /_}_$seed.mp4"); done
done < "$OUT/prompts.txt"
$PY -m utils.toy_world compare "$REFERENCE" --motion zigzag --strip-pairs 2 --out-dir $OUT \
  --base "${videos[@]/#/$OUT/base/}" --motiondirector "${videos[@]/#/$OUT/motiondirector/}"
