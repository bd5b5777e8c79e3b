#!/usr/bin/env bash
# Train a small model of the given architecture on binarised data (demo and test sizes).
# Usage: train_demo_model.sh DATA_BIN SAVE_DIR ARCH MAX_UPDATE SEED USER_DIR [extra fairseq-train flags]
set -euo pipefail
data=$1 save=$2 arch=$3 max_update=$4 seed=$5 user_dir=$6
shift 6
mkdir -p "$save"
fairseq-train "$data" --user-dir "$user_dir" --arch "$arch" --task translation \
  --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 \
  --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256 \
  --encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings \
  --dropout 0.1 --optimizer adam --adam-betas '(0.9, 0.98)' --lr 2e-3 \
  --lr-scheduler inverse_sqrt --warmup-updates 200 --clip-norm 1.0 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 2048 --max-update "$max_update" --seed "$seed" --cpu \
  --save-dir "$save" --no-epoch-checkpoints --log-format simple --log-interval 100 \
  --num-workers 0 "$@" > "$save/train.log" 2>&1
tail -n 2 "$save/train.log"
