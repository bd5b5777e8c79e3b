#!/usr/bin/env bash
# Train and evaluate the adaptive-span character LM (Sukhbaatar et al. 2019) on prepared enwik8 or text8 in the
# streaming task: blocks of 512, memory trimmed to the learned spans, relative positions, Adagrad with per-tensor
# gradient clipping; bits per character of the best checkpoint on valid and test go into $RESULTS (results.md).
#
#   bash recipes/train_char_lm.sh DATASET [PRESET]    DATASET: enwik8 | text8; PRESET: small (default) | large
#   e.g. GPUS=8 bash recipes/train_char_lm.sh enwik8 large
#
# Expected time on one modern GPU (A100/H100 class), --fp16: small about 4 days (600k updates on enwik8, 900k on
# text8), large about 2 weeks; with 8 GPUs about an eighth.
# Paper settings: 64 streams per update, blocks of 512, S 8192, span penalty 5e-7, Adagrad lr 0.07, clip 0.03,
# 32k warm-up updates. Variables: DATA (default data/$DATASET), WORK (default runs/$DATASET/$PRESET), GPUS (default
# 1), STREAMS_PER_GPU (default 16), UPDATE_FREQ (default: reach 64 streams), MAX_UPDATE, FP16 (default 1 on a GPU),
# SIZE (paper, or tiny: a 1-layer model for 20 updates on the CPU), RESULTS (default results.md). Restartable.
set -euo pipefail
DATASET=${1:?usage: train_char_lm.sh enwik8|text8 [small|large]}
PRESET=${2:-small}
case "$DATASET" in enwik8) DEFAULT_UPDATES=600000 ;; text8) DEFAULT_UPDATES=900000 ;;
  *) echo "unknown DATASET '$DATASET': enwik8 or text8" >&2; exit 2 ;; esac
case "$PRESET" in small | large) ;; *) echo "unknown PRESET '$PRESET': small or large" >&2; exit 2 ;; esac
DATA=${DATA:-data/$DATASET}
WORK=${WORK:-runs/$DATASET/$PRESET}
GPUS=${GPUS:-1}
STREAMS_PER_GPU=${STREAMS_PER_GPU:-16}
PAPER_STREAMS=64  # streams (sequences of 512 tokens) per update in the paper
UPDATE_FREQ=${UPDATE_FREQ:-$(( (PAPER_STREAMS + STREAMS_PER_GPU * GPUS - 1) / (STREAMS_PER_GPU * GPUS) ))}
MAX_UPDATE=${MAX_UPDATE:-$DEFAULT_UPDATES}
SIZE=${SIZE:-paper}
RESULTS=${RESULTS:-results.md}
BLOCK=512 WARMUP=32000
USER_DIR=$(python -c 'import os, sparse_attn_fairseq as p; print(os.path.dirname(p.__file__))')
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"

MODEL=(--arch "transformer_lm_adaptive_span_$PRESET")
DEVICE=()
if python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' && [[ ${FP16:-1} == 1 ]]; then
  DEVICE=(--fp16 --fp16-no-flatten-grads)  # the clip is per tensor: no flat fp16 buffer
fi
if [[ $SIZE == tiny ]]; then
  MODEL+=(--decoder-layers 1 --decoder-embed-dim 32 --decoder-ffn-embed-dim 64 --decoder-attention-heads 2
          --adaptive-span-max 64 --adaptive-span-init 0.25)
  DEVICE=(--cpu --num-workers 0)
  BLOCK=16 WARMUP=5 MAX_UPDATE=20 STREAMS_PER_GPU=4 UPDATE_FREQ=1
elif [[ $SIZE != paper ]]; then
  echo "SIZE must be paper or tiny, got '$SIZE'" >&2; exit 2
fi
[[ -f "$DATA/bin/dict.txt" ]] || { echo "no binarised data in $DATA/bin: run recipes/prepare_char_lm.sh $DATASET" >&2; exit 2; }
mkdir -p "$WORK/checkpoints"
log "$DATASET $PRESET ($SIZE): $GPUS GPU(s) x $STREAMS_PER_GPU streams x update-freq $UPDATE_FREQ =" \
  "$((GPUS * STREAMS_PER_GPU * UPDATE_FREQ)) streams of $BLOCK per update (paper: $PAPER_STREAMS); $MAX_UPDATE updates"

step train fairseq-train "$DATA/bin" --user-dir "$USER_DIR" --task truncated_bptt_lm "${MODEL[@]}" "${DEVICE[@]}" \
  --tokens-per-sample "$BLOCK" --batch-size "$STREAMS_PER_GPU" --batch-size-valid "$STREAMS_PER_GPU" \
  --update-freq "$UPDATE_FREQ" --optimizer adagrad_with_grad_clip --adagrad-clip 0.03 --lr 0.07 \
  --lr-scheduler fixed --warmup-updates "$WARMUP" --criterion cross_entropy --max-update "$MAX_UPDATE" \
  --validate-interval-updates 1000 --save-interval-updates 10000 --keep-interval-updates 1 --no-epoch-checkpoints \
  --save-dir "$WORK/checkpoints" --log-format simple --log-interval 100 --seed 1
bpc() {  # fairseq-eval-lm's "Loss (base 2)": bits per character here (every token predicted once)
  fairseq-eval-lm "$DATA/bin" --user-dir "$USER_DIR" --task truncated_bptt_lm "${DEVICE[@]:0:1}" \
    --path "$WORK/checkpoints/checkpoint_best.pt" --gen-subset "$1" --batch-size 8 --tokens-per-sample "$BLOCK" 2>&1 \
    | tee "$LOGS/eval-lm-$1.log" | grep -o 'Loss (base 2): [0-9.]*' | cut -d' ' -f4 > "$WORK/bpc.$1"
}
step eval-valid bpc valid
step eval-test bpc test
python "$HERE/results.py" "$RESULTS" lm "$DATASET" "$PRESET" "$SIZE" "$(cat "$WORK/bpc.valid")" "$(cat "$WORK/bpc.test")"
log "done: dev $(cat "$WORK/bpc.valid") / test $(cat "$WORK/bpc.test") bpc; row written to $RESULTS"
