#!/usr/bin/env bash
# WMT16 Ro-En (both papers): Europarl v8 + SETIMES2 for training, newsdev2016 as valid, newstest2016 as test; a joint
# sentencepiece BPE vocabulary, then fairseq-preprocess.
#
#   bash recipes/prepare_wmt16_ro_en.sh            # about 15 minutes on a modern machine (download included)
#
# Variables: WORK (default data/wmt16_ro_en), STATMT_MIRROR, OPUS_MIRROR, VOCAB (default 32000), WORKERS.
# Restartable: finished steps are skipped on a re-run; logs in $WORK/logs.
set -euo pipefail
WORK=${WORK:-data/wmt16_ro_en}
STATMT_MIRROR=${STATMT_MIRROR:-http://data.statmt.org}
OPUS_MIRROR=${OPUS_MIRROR:-https://object.pouta.csc.fi}
EUROPARL_URL=${EUROPARL_URL:-http://www.statmt.org/europarl/v8/training-parallel-ep-v8.tgz}
SETIMES_URL=${SETIMES_URL:-$OPUS_MIRROR/OPUS-SETIMES/v2/moses/en-ro.txt.zip}
DEV_URL=${DEV_URL:-$STATMT_MIRROR/wmt16/translation-task/dev.tgz}
TEST_URL=${TEST_URL:-$STATMT_MIRROR/wmt16/translation-task/test.tgz}
DEV_MD5=${DEV_MD5:-md5:4a3dc2760bb077f4308cce96b06e6af6}   # sacrebleu's wmt16 dev archive
TEST_MD5=${TEST_MD5:-md5:3d809cd0c2c86adb2c67034d15c4e446}  # sacrebleu's wmt16 test archive
VOCAB=${VOCAB:-32000}
source "$(dirname "$0")/lib.sh"
mkdir -p "$WORK/download" "$WORK/raw" "$WORK/clean" "$WORK/spm"

log "WMT16 Ro-En -> $WORK (steps: download, extract, clean, sentencepiece, binarize)"
step download-europarl fetch "$EUROPARL_URL" "$WORK/download/training-parallel-ep-v8.tgz"
step download-setimes fetch "$SETIMES_URL" "$WORK/download/setimes2-en-ro.zip"
step download-dev fetch "$DEV_URL" "$WORK/download/dev.tgz" "$DEV_MD5"
step download-test fetch "$TEST_URL" "$WORK/download/test.tgz" "$TEST_MD5"
step extract bash -c "cd '$WORK/raw' && tar -xzf ../download/training-parallel-ep-v8.tgz && tar -xzf ../download/dev.tgz \
  && tar -xzf ../download/test.tgz && python -m zipfile -e ../download/setimes2-en-ro.zip setimes"

text() {
  local raw="$WORK/raw" lang
  for lang in ro en; do
    cat "$raw/training-parallel-ep-v8/europarl-v8.ro-en.$lang" "$raw/setimes/SETIMES.en-ro.$lang" > "$raw/train.$lang"
  done
  python -m sparse_attn_fairseq.data.corpora segments "$WORK/clean/valid.ro" "$raw/dev/newsdev2016-roen-src.ro.sgm"
  python -m sparse_attn_fairseq.data.corpora segments "$WORK/clean/valid.en" "$raw/dev/newsdev2016-roen-ref.en.sgm"
  python -m sparse_attn_fairseq.data.corpora segments "$WORK/clean/test.ro" "$raw/test/newstest2016-roen-src.ro.sgm"
  python -m sparse_attn_fairseq.data.corpora segments "$WORK/clean/test.en" "$raw/test/newstest2016-roen-ref.en.sgm"
}
step text text
step clean-train python -m sparse_attn_fairseq.data.corpora clean "$WORK/raw/train.ro" "$WORK/raw/train.en" \
  "$WORK/clean/train.ro" "$WORK/clean/train.en" --max-len 250
prepare_pair ro en "$VOCAB"
log "done: binarised data in $WORK/bin, sentencepiece model $WORK/spm.model, raw test text in $WORK/clean/test.{ro,en}"
