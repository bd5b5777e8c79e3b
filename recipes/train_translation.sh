#!/usr/bin/env bash
# Train, average, translate and score one model on a prepared translation data set, with the papers' settings; the
# score goes into $RESULTS (results.md) beside the paper's.
#
#   bash recipes/train_translation.sh DATASET ARCH
#     DATASET: iwslt17_de_en | wmt16_ro_en | wmt14_en_de   (prepared by recipes/prepare_<DATASET>.sh)
#     ARCH:    transformer | entmax (learned alpha) | entmax15 | sparsemax | rela | adaptive_span
#   e.g. GPUS=4 bash recipes/train_translation.sh wmt16_ro_en entmax
#
# Expected time on one modern GPU (A100/H100 class): IWSLT17 about 10 h, WMT16 Ro-En about 1 day, WMT14 En-De about
# 2-3 days at the papers' update counts (ReLA setting: 300k updates); alpha-entmax costs about 1.3x.
# Settings: SETUP=entmax (Correia et al. 2019: Transformer base, 8192 tokens per batch, 20k warm-up updates then
# inverse square root, beam 5) for every ARCH except rela, SETUP=rela (Zhang et al. 2021: Transformer base, 25000
# tokens per batch, Adam 0.9/0.98, warm-up 4000, 300k updates, label smoothing 0.1, beam 4, length penalty 0.6,
# average of 5 checkpoints) for rela; set SETUP to compare any ARCH in either setting.
# Variables: DATA (default data/$DATASET), WORK (default runs/$DATASET/$ARCH-$SETUP), GPUS (default 1), MAX_TOKENS
# per GPU (default 4096), UPDATE_FREQ (default: reach the paper's tokens per batch), MAX_UPDATE, SIZE (paper, or tiny:
# a 1-layer model for 20 updates on the CPU, to test the recipe), RWTH (gold alignments for the AER of De-En
# models, default data/rwth_de_en), RESULTS (default results.md). Restartable; logs in $WORK/logs.
set -euo pipefail
DATASET=${1:?usage: train_translation.sh DATASET ARCH}
ARCH=${2:?usage: train_translation.sh DATASET ARCH}
case "$DATASET" in
  iwslt17_de_en) SRC=de TGT=en ;;
  wmt16_ro_en) SRC=ro TGT=en ;;
  wmt14_en_de) SRC=en TGT=de ;;
  *) echo "unknown DATASET '$DATASET': iwslt17_de_en, wmt16_ro_en or wmt14_en_de" >&2; exit 2 ;;
esac
case "$ARCH" in
  transformer) FAIRSEQ_ARCH=transformer ARCH_FLAGS=() ;;
  entmax) FAIRSEQ_ARCH=transformer_entmax ARCH_FLAGS=() ;;
  entmax15 | sparsemax) FAIRSEQ_ARCH=transformer_entmax ARCH_FLAGS=(--encoder-attention-normalizer "$ARCH" \
    --decoder-attention-normalizer "$ARCH" --encoder-decoder-attention-normalizer "$ARCH") ;;
  rela) FAIRSEQ_ARCH=transformer_rela ARCH_FLAGS=() ;;
  adaptive_span) FAIRSEQ_ARCH=transformer_adaptive_span ARCH_FLAGS=() ;;
  *) echo "unknown ARCH '$ARCH': transformer, entmax, entmax15, sparsemax, rela or adaptive_span" >&2; exit 2 ;;
esac
SETUP=${SETUP:-$([[ $ARCH == rela ]] && echo rela || echo entmax)}
DATA=${DATA:-data/$DATASET}
WORK=${WORK:-runs/$DATASET/$ARCH-$SETUP}
GPUS=${GPUS:-1}
MAX_TOKENS=${MAX_TOKENS:-4096}
SIZE=${SIZE:-paper}
RWTH=${RWTH:-data/rwth_de_en}
RESULTS=${RESULTS:-results.md}
USER_DIR=$(python -c 'import os, sparse_attn_fairseq as p; print(os.path.dirname(p.__file__))')
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"

if [[ $SETUP == rela ]]; then
  PAPER_TOKENS=25000  # tokens per batch in the ReLA paper (6250 x 4 accumulation)
  LR=7e-4 WARMUP=4000 MAX_UPDATE=${MAX_UPDATE:-300000} BEAM=4 LENPEN=0.6 AVERAGE=5 DROPOUT=0.1
else
  PAPER_TOKENS=8192  # tokens per batch in the entmax paper
  LR=5e-4 WARMUP=20000 MAX_UPDATE=${MAX_UPDATE:-100000} BEAM=5 LENPEN=1.0 AVERAGE=5 DROPOUT=0.3
fi
UPDATE_FREQ=${UPDATE_FREQ:-$(( (PAPER_TOKENS + MAX_TOKENS * GPUS - 1) / (MAX_TOKENS * GPUS) ))}
MODEL=(--arch "$FAIRSEQ_ARCH" "${ARCH_FLAGS[@]}" --share-all-embeddings)
DEVICE=()
GENERATE_LIMIT=()
SAVE_EVERY=$(( MAX_UPDATE / 20 > 0 ? MAX_UPDATE / 20 : 1 ))
if [[ $SIZE == tiny ]]; then
  MODEL+=(--encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32 --encoder-ffn-embed-dim 64
          --decoder-ffn-embed-dim 64 --encoder-attention-heads 2 --decoder-attention-heads 2)
  DEVICE=(--cpu --num-workers 0)
  MAX_UPDATE=20 WARMUP=5 MAX_TOKENS=1024 UPDATE_FREQ=1 AVERAGE=2 SAVE_EVERY=10 BEAM=2
  GENERATE_LIMIT=(--max-len-a 1.2 --max-len-b 10)
elif [[ $SIZE != paper ]]; then
  echo "SIZE must be paper or tiny, got '$SIZE'" >&2; exit 2
fi
[[ -f "$DATA/bin/dict.$SRC.txt" ]] || { echo "no binarised data in $DATA/bin: run recipes/prepare_$DATASET.sh" >&2; exit 2; }
mkdir -p "$WORK/checkpoints"
log "$DATASET $ARCH ($SETUP setting, $SIZE): $GPUS GPU(s) x $MAX_TOKENS tokens x update-freq $UPDATE_FREQ =" \
  "$((GPUS * MAX_TOKENS * UPDATE_FREQ)) tokens per update (paper: $PAPER_TOKENS); $MAX_UPDATE updates"

step train fairseq-train "$DATA/bin" --user-dir "$USER_DIR" "${MODEL[@]}" "${DEVICE[@]}" --source-lang "$SRC" \
  --target-lang "$TGT" --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --lr "$LR" \
  --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --warmup-init-lr 1e-7 --dropout "$DROPOUT" \
  --attention-dropout 0.1 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens "$MAX_TOKENS" \
  --update-freq "$UPDATE_FREQ" --max-update "$MAX_UPDATE" --save-interval-updates "$SAVE_EVERY" \
  --keep-interval-updates "$AVERAGE" --keep-last-epochs "$AVERAGE" --save-dir "$WORK/checkpoints" --log-format simple \
  --log-interval 100 --seed 1
step average python -m sparse_attn_fairseq.data.average_checkpoints "$WORK/checkpoints" "$WORK/averaged.pt" \
  --last "$AVERAGE"
step generate fairseq-generate "$DATA/bin" --user-dir "$USER_DIR" "${DEVICE[@]}" --path "$WORK/averaged.pt" \
  --source-lang "$SRC" --target-lang "$TGT" --gen-subset test --beam "$BEAM" --lenpen "$LENPEN" --batch-size 64 "${GENERATE_LIMIT[@]}" \
  --remove-bpe sentencepiece --results-path "$WORK/generate"
hypotheses() {  # fairseq's detokenised hypotheses (D- lines), in test-set order
  grep '^D-' "$WORK/generate/generate-test.txt" | sed 's/^D-//' | sort -n -k1,1 | cut -f3 > "$WORK/hyp.$TGT"
}
step hypotheses hypotheses
step sacrebleu bash -c "sacrebleu '$DATA/clean/test.$TGT' -i '$WORK/hyp.$TGT' -m bleu -b -w 2 > '$WORK/sacrebleu.txt' \
  && sacrebleu '$DATA/clean/test.$TGT' -i '$WORK/hyp.$TGT' -m bleu -f text > '$WORK/sacrebleu-signature.txt'"
if python -c 'import sacremoses' 2> /dev/null; then  # the entmax paper's tokenised BLEU (Moses tokeniser)
  step tokenised-bleu bash -c "python -m sacremoses -l '$TGT' tokenize < '$DATA/clean/test.$TGT' > '$WORK/ref.tok' \
    && python -m sacremoses -l '$TGT' tokenize < '$WORK/hyp.$TGT' > '$WORK/hyp.tok' \
    && sacrebleu '$WORK/ref.tok' -i '$WORK/hyp.tok' -m bleu -b -w 2 --tokenize none > '$WORK/tokenised-bleu.txt'"
fi
AER=-
if [[ $DATASET == iwslt17_de_en && -f "$RWTH/rwth.talp" ]]; then  # AER on the RWTH gold alignments
  for lang in de en; do
    step "rwth-encode-$lang" bash -c "python -m sparse_attn_fairseq.data.spm encode --model '$DATA/spm.model' \
      < '$RWTH/rwth.$lang' > '$WORK/rwth.$lang'"
  done
  step rwth-binarize fairseq-preprocess --source-lang de --target-lang en --testpref "$WORK/rwth" --srcdict \
    "$DATA/bin/dict.de.txt" --tgtdict "$DATA/bin/dict.en.txt" --destdir "$WORK/rwth-bin" --workers 1
  step analyze python -m sparse_attn_fairseq.analyze "$WORK/rwth-bin" --path "$WORK/averaged.pt" --gen-subset test "${DEVICE[@]:0:1}" \
    --gold-alignments "$RWTH/rwth.talp" --gold-format talp --out-dir "$WORK/analysis"
  AER=$(python -c "import json,sys; m=json.load(open(sys.argv[1]))['models'][0]['aer']['normal']; \
print(f\"{min(min(x['head_average'], x['best_head_aer']) for x in m):.3f}\")" "$WORK/analysis/analysis.json")
fi
python "$HERE/results.py" "$RESULTS" translation "$DATASET" "$ARCH" "$SETUP" "$SIZE" "$(cat "$WORK/sacrebleu.txt")" \
  "$(cat "$WORK/tokenised-bleu.txt" 2> /dev/null || echo -)" "$AER" "$(cat "$WORK/sacrebleu-signature.txt")"
log "done: sacreBLEU $(cat "$WORK/sacrebleu.txt"), AER $AER; row written to $RESULTS"
