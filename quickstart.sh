#!/usr/bin/env bash
# The whole job on an embedded default, offline on a CPU: install, build a tiny random text-to-video
# model, train MotionDirector for a few steps on the bundled synthetic clip, then generate a video
# with the inversion noise prior. Results are meaningless (random weights); the pipeline is real.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q torch==2.13.0
fi
$PY -m pip install -q -r requirements.txt

mkdir -p outputs
$PY -m utils.tiny_model models/tiny_t2v
$PY MotionDirector_train.py --config configs/config_tiny_cpu.yaml output_dir=outputs/quickstart | tee outputs/quickstart.log
run_dir=$(sed -n 's/^run folder: //p' outputs/quickstart.log | tail -n 1)
$PY MotionDirector_inference.py --model models/tiny_t2v --prompt "A ball is moving to the right." \
  --checkpoint_folder "$run_dir" --checkpoint_index 6 --noise_prior 0.5 \
  --width 64 --height 64 --num-frames 8 --num-steps 10 --seed 1234 --device cpu \
  --output_dir outputs/quickstart/inference
