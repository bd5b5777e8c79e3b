# Shared by the recipes (source it): logging, restartable steps, verified downloads.
# A recipe sets WORK (its output folder) before sourcing; steps write their logs to $WORK/logs and mark themselves
# done in $WORK/.done, so a re-run skips what finished and redoes what was interrupted.

LOGS="$WORK/logs"
DONE="$WORK/.done"
mkdir -p "$LOGS" "$DONE"

log() { echo "[$(date +%H:%M:%S)] $*"; }

# step NAME COMMAND...: run COMMAND once; its output goes to $LOGS/NAME.log; on failure show the log's tail and stop.
step() {
  local name=$1
  shift
  if [[ -e "$DONE/$name" ]]; then
    log "skip  $name (done earlier)"
    return 0
  fi
  log "start $name (log: $LOGS/$name.log)"
  if ! "$@" > "$LOGS/$name.log" 2>&1; then
    log "FAILED $name; the end of $LOGS/$name.log:"
    tail -n 20 "$LOGS/$name.log" >&2
    exit 1
  fi
  touch "$DONE/$name"
}

# checksum_ok FILE ALGO:SUM: the file's md5 or sha256 equals SUM.
checksum_ok() {
  local file=$1 algo=${2%%:*} sum=${2#*:}
  [[ "$(${algo}sum "$file" | cut -d' ' -f1)" == "$sum" ]]
}

# fetch URL DEST [ALGO:SUM]: download URL to DEST, resuming a partial download (DEST.part), verified before use.
# A file whose checksum is wrong is deleted and fetched once more; a second mismatch stops the recipe. Without a
# published checksum the first download's sha256 is recorded in $WORK/CHECKSUMS and every later copy must match it.
fetch() {
  local url=$1 dest=$2 expected=${3:-}
  if [[ -z "$expected" && -f "$WORK/CHECKSUMS" ]]; then
    expected=$(awk -v f="$(basename "$dest")" '$2 == f {print "sha256:" $1}' "$WORK/CHECKSUMS")
  fi
  local attempt
  for attempt in 1 2; do
    if [[ ! -f "$dest" ]]; then
      log "download $url"
      curl -fsSL --retry 3 -C - -o "$dest.part" "$url" || { log "download failed: $url"; return 1; }
      mv "$dest.part" "$dest"
    fi
    if [[ -z "$expected" ]]; then
      echo "$(sha256sum "$dest" | cut -d' ' -f1) $(basename "$dest")" >> "$WORK/CHECKSUMS"
      log "recorded the sha256 of $(basename "$dest") in $WORK/CHECKSUMS (no published checksum)"
      return 0
    fi
    if checksum_ok "$dest" "$expected"; then
      log "verified $(basename "$dest") ($expected)"
      return 0
    fi
    log "checksum mismatch for $dest (expected $expected): deleted, fetching again"
    rm -f "$dest"
  done
  log "ERROR: $url does not match $expected twice; check the mirror"
  return 1
}

# sentencepiece, then fairseq-preprocess of a translation pair: prepare_pair SRC TGT VOCAB JOINT
# reads $WORK/clean/{train,valid,test}.{SRC,TGT}; writes $WORK/spm.model (joint) and $WORK/bin.
prepare_pair() {
  local src=$1 tgt=$2 vocab=$3
  step spm-train python -m sparse_attn_fairseq.data.spm train --input "$WORK/clean/train.$src" \
    "$WORK/clean/train.$tgt" --model-prefix "$WORK/spm" --vocab-size "$vocab"
  local split lang files=()
  for split in train valid test; do
    for lang in "$src" "$tgt"; do
      files+=("$WORK/clean/$split.$lang" "$WORK/spm/$split.$lang")
    done
  done
  step spm-encode python -m sparse_attn_fairseq.data.spm encode --model "$WORK/spm.model" "${files[@]}"
  step binarize fairseq-preprocess --source-lang "$src" --target-lang "$tgt" --trainpref "$WORK/spm/train" \
    --validpref "$WORK/spm/valid" --testpref "$WORK/spm/test" --destdir "$WORK/bin" --joined-dictionary \
    --workers "${WORKERS:-4}"
}
