#!/usr/bin/env bash
# v3 training at full size on one lent GPU (device tool: H100/H200), in one call of at most 10 minutes.
#
# Here (CPU machine), once:   bash lab/gpu/train_v3.sh --prepare   (copies the training faces into .gpu-carry/)
# Then with the device tool:  run(command="bash lab/gpu/train_v3.sh", carry=[".gpu-carry"], timeout_s=600)
# It trains the same model and losses as the CPU legs (lab/train/compact_v3.py, configs/compact_v3.json) with a larger
# batch, 256² samples and bf16, for 8 minutes, and writes under $OUT: compact_v3_gpu.safetensors (EMA weights)
# and train.log; evaluate the weights here (docs/training.md, "v3") against the CPU legs' candidate. The GPU image has torch, numpy, OpenCV,
# Pillow and safetensors; the video family (PyAV) is held out of training, so nothing else is needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=.gpu-carry
if [ "${1:-}" = "--prepare" ]; then
  rm -rf "$CARRY" && mkdir -p "$CARRY/data"
  for d in ffhq256 london 3dsk; do cp -r ../shared/data/$d "$CARRY/data/"; done   # 55 MB (64 MiB travel)
  echo "$CARRY/ $(du -sh "$CARRY" | cut -f1) ready (never committed: .gitignore)"; exit 0
fi
OUT="${OUT:-/tmp/facerefine-gpu-out}"; mkdir -p "$OUT"
export FACEREFINE_SHARED_DATA="$PWD/$CARRY/data" FACEREFINE_OFFLINE=1
# the package is the checkout itself, imported as `facerefine` from its parent folder
ln -sfn "$PWD" /tmp/facerefine && cd /tmp
# the CPU legs' sources but UTKFace and StyleGAN (they would take the data past the 64 MiB that travels)
python3 -c "import json; c = json.load(open('facerefine/configs/compact_v3.json'));
c['sources'] = [s for s in c['sources'] if s[0] not in ('utkface', 'stylegan256')];
json.dump(c, open('$OUT/config.json', 'w'))"
python3 -m facerefine.lab.train.compact_v3 --config "$OUT/config.json" --device cuda --workers 12 \
  --batch-size 32 --patch 256 --steps 4000 --max-minutes 8 --threads 4 \
  --out-dir "$OUT/run" 2>&1 | tee "$OUT/train.log"
python3 -m facerefine.lab.train.compact_v3 --config "$OUT/config.json" --out-dir "$OUT/run" \
  --export "$OUT/compact_v3_gpu.safetensors"
rm -f "$OUT/run/checkpoint.pt"  # 4x the weights: not worth bringing back
