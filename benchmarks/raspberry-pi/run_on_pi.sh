#!/usr/bin/env bash
# Benchmark edgekit bundles on a real Raspberry Pi (Raspberry Pi OS bookworm 64-bit, Python 3.11).
#
#   1. a venv (default ~/edgekit-venv) with only the runtime extra: pip install "<edgekit checkout>[runtime]"
#      (numpy, onnxruntime, openvino, ai-edge-litert, tokenizers, grpcio; no torch, no transformers);
#   2. `edgekit bench BUNDLES_DIR --test TEST --out OUT_DIR --threads 1,4 --batch 1,8`:
#      latency, throughput, memory, size and accuracy of every bundle, in OUT_DIR/results.{json,md};
#   3. answers.py: every bundle's label and calibrated score per test text, in OUT_DIR/answers-pi.json.
#      Copy it to the x86 machine and compare it with that machine's answers for the same test file:
#        python benchmarks/raspberry-pi/answers.py BUNDLES_DIR TEST.jsonl answers-x86.json
#        python benchmarks/raspberry-pi/compare.py answers-x86.json answers-pi.json
#   4. the board, temperature and throttling state before and after, in OUT_DIR/device.txt: a Pi that
#      throttled (hot, or an undersized power supply) reports slow timings that are not the model's.
#
# usage:  bash run_on_pi.sh BUNDLES_DIR TEST.jsonl [OUT_DIR]      (OUT_DIR default ./pi-results)
# env:    REPO    the edgekit checkout to install (default: the repository holding this script)
#         VENV    the venv to create/reuse (default ~/edgekit-venv); PYTHON (default python3)
#         THREADS / BATCH  override "1,4" / "1,8"
#         REFERENCE  reference.json from an x86 `edgekit bench --teacher` run: passed as --reference so the
#                    Pi results get the teacher-agreement and cascade columns without torch
# Needs: sudo apt install python3-venv   (once). Bundles and the test file are copied to the Pi by you.
# Put a heatsink/fan on the Pi and close other programs; run it twice and keep the second results.
set -euo pipefail

usage() { echo "usage: $0 BUNDLES_DIR TEST.jsonl [OUT_DIR]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${REPO:-$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/../.." && pwd))}
REPO=$(cd "$REPO" && pwd)
BUNDLES=$(cd "$1" && pwd) || { echo "no such directory: $1" >&2; exit 2; }
TEST=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
[ -f "$TEST" ] || { echo "no such file: $2" >&2; exit 2; }
OUT=${3:-pi-results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
VENV=${VENV:-$HOME/edgekit-venv}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-1,4}
BATCH=${BATCH:-1,8}
EXTRA=()
if [ -n "${REFERENCE:-}" ]; then EXTRA=(--reference "$REFERENCE"); fi

[ "$(uname -m)" = aarch64 ] || echo "warning: this is $(uname -m), not a 64-bit Pi OS (aarch64); results are not Pi results" >&2
[ -r /proc/device-tree/model ] || echo "warning: no /proc/device-tree/model: not a Raspberry Pi (or emulated); timings are not Pi timings" >&2

device_state() {
  echo "## $1  $(date -Is)"
  [ -r /proc/device-tree/model ] && { tr -d '\0' </proc/device-tree/model; echo; }
  uname -a
  if command -v vcgencmd >/dev/null; then
    vcgencmd measure_temp; vcgencmd get_throttled   # throttled=0x0 means never throttled since boot
    vcgencmd measure_clock arm
  fi
  grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
  echo
}
device_state before >"$OUT/device.txt"

echo "### venv $VENV, pip install \"$REPO[runtime]\""
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/python" -m pip install --prefer-binary "$REPO[runtime]" >"$OUT/pip.log" 2>&1; then
  tail -20 "$OUT/pip.log" >&2; echo "pip install failed (full log: $OUT/pip.log)" >&2; exit 1
fi
grep -E '^Successfully' "$OUT/pip.log" || true
"$VENV/bin/python" -m pip freeze >"$OUT/pip-freeze.txt"

echo "### edgekit bench (threads $THREADS, batch $BATCH)"
"$VENV/bin/edgekit" bench "$BUNDLES" --test "$TEST" --out "$OUT" --threads "$THREADS" --batch "$BATCH" "${EXTRA[@]}"

echo "### answers.py -> $OUT/answers-pi.json"
"$VENV/bin/python" "$REPO/benchmarks/raspberry-pi/answers.py" "$BUNDLES" "$TEST" "$OUT/answers-pi.json"

device_state after >>"$OUT/device.txt"
if grep -q 'throttled=0x[1-9a-f]' "$OUT/device.txt"; then
  echo "warning: the Pi reports throttling (see $OUT/device.txt): timings are pessimistic" >&2
fi
echo
echo "Done: $OUT (results from edgekit bench, answers-pi.json, device.txt)."
echo "On the x86 machine, with the same bundles and test file:"
echo "  python benchmarks/raspberry-pi/answers.py BUNDLES_DIR $(basename "$TEST") answers-x86.json"
echo "  python benchmarks/raspberry-pi/compare.py answers-x86.json answers-pi.json"
