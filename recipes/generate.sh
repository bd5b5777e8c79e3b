#!/usr/bin/env bash
# Translate the binarised test split with beam 5 and print sacreBLEU's line (signature = score ...).
# Usage: generate.sh DATA_BIN CHECKPOINT REFERENCE USER_DIR [extra fairseq-generate flags]
set -euo pipefail
data=$1 checkpoint=$2 reference=$3 user_dir=$4
shift 4
out="${checkpoint%.pt}.test.out"
fairseq-generate "$data" --user-dir "$user_dir" --path "$checkpoint" --gen-subset test \
  --beam 5 --batch-size 64 --cpu "$@" > "$out" 2> "$out.log"
grep '^H-' "$out" | sort -t- -k2 -n | cut -f3 > "$out.hyp"
sacrebleu "$reference" -i "$out.hyp" -m bleu -w 2 --format text
