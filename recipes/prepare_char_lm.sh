#!/usr/bin/env bash
# enwik8 or text8 for the adaptive-span character LMs: the last 10M units are 5M valid + 5M test, as in the paper;
# enwik8 is modelled in bytes, text8 in characters (a space is the symbol "_"). Then fairseq-preprocess.
#
#   bash recipes/prepare_char_lm.sh enwik8         # about 10 minutes on a modern machine (download included)
#   bash recipes/prepare_char_lm.sh text8
#
# Variables: WORK (default data/<dataset>), CHECKSUM, MATTMAHONEY_MIRROR (default http://mattmahoney.net/dc), WORKERS.
# Restartable: finished steps are skipped on a re-run; logs in $WORK/logs.
set -euo pipefail
DATASET=${1:?usage: prepare_char_lm.sh enwik8|text8}
case "$DATASET" in  # CHECKSUM (ALGO:SUM) overrides the expected checksum, for another mirror's archive
  enwik8) CHECKSUM=${CHECKSUM-sha256:547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc} ;;  # published
  text8) CHECKSUM=${CHECKSUM-} ;;  # none published: the first download's sha256 is recorded in $WORK/CHECKSUMS
  *) echo "unknown dataset '$DATASET': choose enwik8 or text8" >&2; exit 2 ;;
esac
WORK=${WORK:-data/$DATASET}
MATTMAHONEY_MIRROR=${MATTMAHONEY_MIRROR:-http://mattmahoney.net/dc}
source "$(dirname "$0")/lib.sh"
mkdir -p "$WORK/download" "$WORK/text"

log "$DATASET -> $WORK (steps: download, split, binarize)"
step download fetch "$MATTMAHONEY_MIRROR/$DATASET.zip" "$WORK/download/$DATASET.zip" "$CHECKSUM"
step split python -m sparse_attn_fairseq.data.corpora "$DATASET" "$WORK/download/$DATASET.zip" "$WORK/text"
step binarize fairseq-preprocess --only-source --trainpref "$WORK/text/train.txt" --validpref "$WORK/text/valid.txt" \
  --testpref "$WORK/text/test.txt" --destdir "$WORK/bin" --workers "${WORKERS:-4}"
log "done: binarised data in $WORK/bin"
