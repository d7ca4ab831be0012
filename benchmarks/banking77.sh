#!/usr/bin/env bash
# The realistic scenario on banking77 (77 fine-grained banking intents): benchmarks/banking77.sh OUT_DIR
# Leaves results.json and results.md (and the bundles) in OUT_DIR. See scenario.sh.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
# banking77 is harder and larger (9,003 training texts): fine-tuning 3 epochs at 64 tokens. Its
# training set is already a large transfer set, so the distillation adds no perturbed copies and
# runs 3 epochs: that halves the teacher's scoring, the slowest step on 2 cores.
FT_EPOCHS=${FT_EPOCHS:-3} MAX_LENGTH=${MAX_LENGTH:-64} DISTILL_EPOCHS=${DISTILL_EPOCHS:-3} AUGMENT=${AUGMENT:-0} \
  exec "$(dirname "$0")/scenario.sh" banking77 "$1"
