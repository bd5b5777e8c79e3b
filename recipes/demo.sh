#!/usr/bin/env bash
# Demo on the synthetic language pair shipped in the repo: generate, preprocess, train, translate,
# score with sacreBLEU. CPU only; about 2 minutes per architecture on 2 idle cores.
#
#   bash recipes/demo.sh                      # all demo architectures
#   ARCHS="transformer" bash recipes/demo.sh  # a subset
#
# Environment: WORK (output folder, default work/demo), MAX_UPDATE (default 800), SEED (default 1).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
USER_DIR=$(python -c 'import os, sparse_attn_fairseq as p; print(os.path.dirname(p.__file__))')
WORK=${WORK:-work/demo}
ARCHS=${ARCHS:-transformer transformer_entmax transformer_rela transformer_adaptive_span}
MAX_UPDATE=${MAX_UPDATE:-800}
SEED=${SEED:-1}

python -m sparse_attn_fairseq.data.synthetic_pair "$WORK/raw"
if [ ! -f "$WORK/bin/dict.src.txt" ]; then
  fairseq-preprocess --source-lang src --target-lang tgt --trainpref "$WORK/raw/train" \
    --validpref "$WORK/raw/valid" --testpref "$WORK/raw/test" --destdir "$WORK/bin" \
    --joined-dictionary --workers 2 > "$WORK/preprocess.log" 2>&1
fi

summary=()
checkpoints=()
: > "$WORK/scores.tsv"
for arch in $ARCHS; do
  save="$WORK/checkpoints/$arch"
  echo "== training $arch ($MAX_UPDATE updates)"
  bash "$HERE/train_demo_model.sh" "$WORK/bin" "$save" "$arch" "$MAX_UPDATE" "$SEED" "$USER_DIR"
  sacrebleu_line=$(bash "$HERE/generate.sh" "$WORK/bin" "$save/checkpoint_best.pt" "$WORK/raw/test.tgt" "$USER_DIR")
  bleu=$(echo "$sacrebleu_line" | awk '{print $3}')  # signature = score ...
  # sparsity figures logged by the plugin on the last validation line (alpha_*, zeros_*, null_*, span_*)
  figures=$(grep "valid on 'valid' subset" "$save/train.log" | tail -n 1 | tr '|' '\n' \
    | grep -E '^ *(alpha|zeros|null|span)_' | xargs || true)
  echo "$arch: BLEU $bleu ${figures}"
  summary+=("$(printf '%-28s BLEU %-6s %s' "$arch" "$bleu" "$figures")")
  wps=$(grep "| train | " "$save/train.log" | tail -n 1 | grep -o 'wps [0-9.]*' | cut -d' ' -f2 || true)
  printf '%s\t%s\t%s\n' "$save/checkpoint_best.pt" "$bleu" "${wps:--}" >> "$WORK/scores.tsv"
  checkpoints+=(--path "$save/checkpoint_best.pt")
done
echo
echo "== demo results (test set, beam 5; ${sacrebleu_line%% = *})"
printf '%s\n' "${summary[@]}"
echo
echo "== what every head learned (sparse-attn-analyze; AER against the pair's gold alignments)"
python -m sparse_attn_fairseq.analyze "$WORK/bin" "${checkpoints[@]}" --out-dir "$WORK/analysis" \
  --gold-alignments "$WORK/raw/test.align" --scores "$WORK/scores.tsv" --cpu 2> "$WORK/analysis.log"
