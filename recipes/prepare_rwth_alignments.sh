#!/usr/bin/env bash
# The RWTH German-English gold alignments (508 sentence pairs, sure and possible links, latin-1), for the AER of
# IWSLT De-En models (recipes/train_translation.sh runs sparse-attn-analyze on them when they are present).
#
#   bash recipes/prepare_rwth_alignments.sh        # seconds
#
# Variables: WORK (default data/rwth_de_en), RWTH_URL: an archive (.tgz, .tar.gz or .zip) holding the German and
# English sentences and the alignments, as distributed at www-i6.informatik.rwth-aachen.de/goldAlignment/ (the exact
# file name was not checked offline: set RWTH_URL to it). Writes $WORK/rwth.{de,en,talp} in UTF-8, the German and
# English sides encoded with SPM_MODEL when it is given (pieces for the model; links stay on words).
set -euo pipefail
WORK=${WORK:-data/rwth_de_en}
RWTH_URL=${RWTH_URL:-https://www-i6.informatik.rwth-aachen.de/goldAlignment/goldAlignment.tgz}
source "$(dirname "$0")/lib.sh"
mkdir -p "$WORK/download" "$WORK/raw"

archive="$WORK/download/$(basename "$RWTH_URL")"
step download fetch "$RWTH_URL" "$archive"
step extract bash -c "case '$archive' in *.zip) python -m zipfile -e '$archive' '$WORK/raw' ;; \
  *) tar -xzf '$archive' -C '$WORK/raw' ;; esac"
step convert python -m sparse_attn_fairseq.data.corpora rwth "$WORK/raw" "$WORK/rwth"
log "done: $WORK/rwth.de, $WORK/rwth.en, $WORK/rwth.talp ($(wc -l < "$WORK/rwth.talp") pairs)"
