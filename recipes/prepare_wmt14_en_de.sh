#!/usr/bin/env bash
# WMT14 En-De (entmax and ReLA papers; fairseq's prepare-wmt14en2de.sh --icml17 data): Europarl v7, Common Crawl and
# News Commentary v9 for training, newstest2013 as valid, the full newstest2014 as test; a joint sentencepiece BPE
# vocabulary, then fairseq-preprocess.
#
#   bash recipes/prepare_wmt14_en_de.sh            # about 40 minutes on a modern machine (download included)
#
# Variables: WORK (default data/wmt14_en_de), STATMT_MIRROR, VOCAB (default 32000), WORKERS. Restartable.
set -euo pipefail
WORK=${WORK:-data/wmt14_en_de}
STATMT_MIRROR=${STATMT_MIRROR:-http://statmt.org/wmt13}
WMT14_MIRROR=${WMT14_MIRROR:-http://statmt.org/wmt14}
EUROPARL_URL=${EUROPARL_URL:-$STATMT_MIRROR/training-parallel-europarl-v7.tgz}
COMMONCRAWL_URL=${COMMONCRAWL_URL:-$STATMT_MIRROR/training-parallel-commoncrawl.tgz}
NEWS_URL=${NEWS_URL:-$WMT14_MIRROR/training-parallel-nc-v9.tgz}
DEV_URL=${DEV_URL:-$WMT14_MIRROR/dev.tgz}
TEST_URL=${TEST_URL:-$WMT14_MIRROR/test-full.tgz}
TEST_MD5=${TEST_MD5:-md5:a8cd784e006feb32ac6f3d9ec7eb389a}  # sacrebleu's wmt14/full test archive
VOCAB=${VOCAB:-32000}
source "$(dirname "$0")/lib.sh"
mkdir -p "$WORK/download" "$WORK/raw" "$WORK/clean" "$WORK/spm"

log "WMT14 En-De -> $WORK (steps: download, extract, clean, sentencepiece, binarize)"
for part in EUROPARL COMMONCRAWL NEWS DEV; do
  url_var="${part}_URL"
  step "download-${part,,}" fetch "${!url_var}" "$WORK/download/$(basename "${!url_var}")"
done
step download-test fetch "$TEST_URL" "$WORK/download/test-full.tgz" "$TEST_MD5"
step extract bash -c "cd '$WORK/raw' && for f in ../download/*.tgz; do tar -xzf \"\$f\"; done"

text() {
  local raw="$WORK/raw" lang
  for lang in en de; do
    cat "$raw/training/europarl-v7.de-en.$lang" "$raw/commoncrawl.de-en.$lang" \
      "$raw/training/news-commentary-v9.de-en.$lang" > "$raw/train.$lang"
    cp "$raw/dev/newstest2013.$lang" "$WORK/clean/valid.$lang"
  done
  python -m sparse_attn_fairseq.data.corpora segments "$WORK/clean/test.en" "$raw/test-full/newstest2014-deen-src.en.sgm"
  python -m sparse_attn_fairseq.data.corpora segments "$WORK/clean/test.de" "$raw/test-full/newstest2014-deen-ref.de.sgm"
}
step text text
step clean-train python -m sparse_attn_fairseq.data.corpora clean "$WORK/raw/train.en" "$WORK/raw/train.de" \
  "$WORK/clean/train.en" "$WORK/clean/train.de" --max-len 250
prepare_pair en de "$VOCAB"
log "done: binarised data in $WORK/bin, sentencepiece model $WORK/spm.model, raw test text in $WORK/clean/test.{en,de}"
