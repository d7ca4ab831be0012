#!/usr/bin/env bash
# The realistic scenario on bitext (27 e-commerce customer-support intents): benchmarks/bitext.sh OUT_DIR
# Leaves results.json and results.md (and the bundles) in OUT_DIR. See scenario.sh.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
# bitext texts are short (99th percentile: 20 tokens): fine-tune at 32 tokens, 2 epochs
FT_EPOCHS=${FT_EPOCHS:-2} MAX_LENGTH=${MAX_LENGTH:-32} exec "$(dirname "$0")/scenario.sh" bitext "$1"
