#!/usr/bin/env bash
# IWSLT17 De-En (the entmax paper's setup): train from the WIT3 2017-01-trnted archive (tag lines dropped), dev2010 +
# tst2010-2015 as valid, tst2017 as test; a joint sentencepiece BPE vocabulary, then fairseq-preprocess.
#
#   bash recipes/prepare_iwslt17_de_en.sh          # about 10 minutes on a modern machine (download included)
#
# Variables: WORK (default data/iwslt17_de_en), IWSLT_MIRROR (the WIT3 archive root; the old wit3.fbk.eu address
# returns 404), VOCAB (default 32000: the paper's joint BPE with 32K merges), WORKERS. Restartable: finished steps are
# skipped on a re-run; logs in $WORK/logs.
set -euo pipefail
WORK=${WORK:-data/iwslt17_de_en}
IWSLT_MIRROR=${IWSLT_MIRROR:-https://raw.githubusercontent.com/hlt-mt/WIT3/master/archive}
TRAIN_URL=${TRAIN_URL:-$IWSLT_MIRROR/2017-01-trnted/texts/de/en/de-en.tgz}
TEST_URL=${TEST_URL:-$IWSLT_MIRROR/2017-01-ted-test/texts/de/en/de-en.tgz}          # German side of tst2017
TEST_REF_URL=${TEST_REF_URL:-$IWSLT_MIRROR/2017-01-ted-test/texts/en/de/en-de.tgz}  # English side of tst2017
TEST_MD5=${TEST_MD5:-md5:e3f5b2a075a2da1a395c8b60bf1e9be1}  # sacrebleu's iwslt17 de-en test archive
VOCAB=${VOCAB:-32000}
source "$(dirname "$0")/lib.sh"
mkdir -p "$WORK/download" "$WORK/raw" "$WORK/clean" "$WORK/spm"

log "IWSLT17 De-En -> $WORK (steps: download, extract, clean, sentencepiece, binarize)"
step download-train fetch "$TRAIN_URL" "$WORK/download/train-de-en.tgz"
step download-test fetch "$TEST_URL" "$WORK/download/test-de-en.tgz" "$TEST_MD5"
step download-test-ref fetch "$TEST_REF_URL" "$WORK/download/test-en-de.tgz"
for archive in train-de-en test-de-en test-en-de; do
  step "extract-$archive" tar -xzf "$WORK/download/$archive.tgz" -C "$WORK/raw"
done

extract() {
  local raw="$WORK/raw" lang set sets
  for lang in de en; do
    python -m sparse_attn_fairseq.data.corpora iwslt-train "$raw/de-en/train.tags.de-en.$lang" "$WORK/raw/train.$lang"
    sets=()
    for set in dev2010 tst2010 tst2011 tst2012 tst2013 tst2014 tst2015; do
      sets+=("$raw/de-en/IWSLT17.TED.$set.de-en.$lang.xml")
    done
    python -m sparse_attn_fairseq.data.corpora segments "$WORK/raw/valid.$lang" "${sets[@]}"
  done
  python -m sparse_attn_fairseq.data.corpora segments "$WORK/raw/test.de" "$raw/de-en/IWSLT17.TED.tst2017.de-en.de.xml"
  python -m sparse_attn_fairseq.data.corpora segments "$WORK/raw/test.en" "$raw/en-de/IWSLT17.TED.tst2017.en-de.en.xml"
}
step text extract
step clean-train python -m sparse_attn_fairseq.data.corpora clean "$WORK/raw/train.de" "$WORK/raw/train.en" \
  "$WORK/clean/train.de" "$WORK/clean/train.en" --max-len 175
step copy-eval bash -c "cp '$WORK/raw/valid.de' '$WORK/raw/valid.en' '$WORK/raw/test.de' '$WORK/raw/test.en' '$WORK/clean/'"
prepare_pair de en "$VOCAB"
log "done: binarised data in $WORK/bin, sentencepiece model $WORK/spm.model, raw test text in $WORK/clean/test.{de,en}"
