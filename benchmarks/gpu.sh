#!/usr/bin/env bash
# Train and eval benchmarks on a GPU machine, ActivityNet-sized synthetic data, batch 256; < 5 minutes.
#   bash benchmarks/gpu.sh            (from the repository root, with the venv active)
# Prints the train table (ours; the PyTorch eager loop on the same GPU when torch sees CUDA is not part of
# this script: the reference implementation is CPU-only) and the eval table; record them with the card's name.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "== train: l2l-jax step, batch 256, published recipe =="
timeout 200 python benchmarks/train_speed.py --batch_size 256 --steps 20 --num_videos 2048 --skip_torch
echo "== eval =="
timeout 150 python benchmarks/eval_speed.py --batch_size 256 --preset default
