#!/usr/bin/env bash
# Does the edgekit runtime install on a Raspberry Pi (aarch64) and give the same answers as on x86?
# Checked without a Pi, under emulation (qemu-user, Cortex-A72 = Pi 4 by default):
#
#   1. build or re-mount the Debian bookworm arm64 rootfs with ../../../shared/tools/arm64/setup.sh
#      (idempotent; skipped when the rootfs, its venv and its mounts are already in place);
#   2. copy the edgekit working tree (tracked + untracked-but-not-ignored files, so uncommitted
#      work is included; no .venv, .git, build output), the bundles and the test file into the
#      rootfs under /opt/edgekit-check/;
#   3. `pip install "/opt/edgekit-check/src[runtime]"` into the aarch64 venv (/opt/venv) - the
#      runtime extra's pins must resolve to aarch64 wheels;
#   4. answers.py on x86 (the repo's .venv) and inside the emulator, same texts, same batches;
#   5. compare.py: labels and calibrated scores per artifact, tolerance per precision.
#      Exit status is compare.py's: non-zero when any artifact fails or is missing.
#
# usage:  sudo bash emulated_check.sh BUNDLES_DIR TEST.jsonl [LIMIT]      (LIMIT default 100 texts)
# env:    REPO       edgekit checkout to test (default: the repository holding this script)
#         BASE       emulation root (default ~/.cache/arm64-emu, as setup.sh), PI=pi4|pi5
#         OUT        where the answers and the comparison go (default /tmp/edgekit-pi-check)
#         X86_PYTHON python with edgekit[runtime] on x86 (default $REPO/.venv/bin/python)
#         ARM_VENV   venv inside the rootfs (default /opt/venv, made by setup.sh, which already holds the
#                    engines); a path that does not exist yet, e.g. /opt/edgekit-venv, is created
#                    empty so that the runtime extra resolves from scratch, as on a fresh Pi
#         SETUP      path of setup.sh (default $REPO/../shared/tools/arm64/setup.sh)
#         COMPARE_ARGS extra options for compare.py, e.g. "--score-tol 0.05"
#         NICE       niceness for the emulated steps (default 10)
# Needs root (chroot, mounts). Runs from any directory.
#
# What it proves: the runtime extra installs from aarch64 wheels on a bookworm / Python 3.11 userland
# and every bundle gives the x86 labels and scores on ARM kernels. What it does not: speed. The
# emulated times printed here are 10-250x slower than a Pi and are labelled EMULATED; measure on a
# real Pi with run_on_pi.sh.
set -euo pipefail

usage() { echo "usage: $0 BUNDLES_DIR TEST.jsonl [LIMIT]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${REPO:-$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/../.." && pwd))}
REPO=$(cd "$REPO" && pwd)
BUNDLES=$(cd "$1" && pwd) || { echo "no such directory: $1" >&2; exit 2; }
TEST=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
[ -f "$TEST" ] || { echo "no such file: $2" >&2; exit 2; }
LIMIT=${3:-100}
[[ $LIMIT =~ ^[0-9]+$ ]] || usage
BASE=${BASE:-${XDG_CACHE_HOME:-$HOME/.cache}/arm64-emu}
ROOT=${ROOT:-$BASE/rootfs}
PI=${PI:-pi4}
case $PI in
  pi4) CPU=cortex-a72; BOARD="Raspberry Pi 4" ;;
  pi5) CPU=cortex-a76; BOARD="Raspberry Pi 5" ;;
  *) echo "PI must be pi4 or pi5" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/edgekit-pi-check}
X86_PYTHON=${X86_PYTHON:-$REPO/.venv/bin/python}
[ -x "$X86_PYTHON" ] || X86_PYTHON=python3
ARM_VENV=${ARM_VENV:-/opt/venv}
SETUP=${SETUP:-$(cd "$REPO/.." && pwd)/shared/tools/arm64/setup.sh}
NICE=${NICE:-10}
DEST=/opt/edgekit-check                 # inside the rootfs
HOST_DEST=$ROOT$DEST
SCRIPTS=benchmarks/raspberry-pi

[ "$(id -u)" = 0 ] || { echo "needs root (chroot into the emulated rootfs): run with sudo" >&2; exit 2; }
mkdir -p "$OUT"
T0=$(date +%s)
step() { echo "### [$(( $(date +%s) - T0 ))s] $*"; }
is_mnt() { grep -q " $1 " /proc/self/mountinfo; }
arm() { QEMU_CPU=$CPU nice -n "$NICE" "$BASE/armrun" "$*"; }

ready() {
  [ -x "$BASE/armrun" ] && [ -x "$ROOT/opt/venv/bin/python" ] &&
    is_mnt "$ROOT/proc" && is_mnt "$ROOT/dev" && is_mnt "$ROOT/proc/cpuinfo" &&
    grep -q "$BOARD" "$ROOT/proc/cpuinfo" &&
    grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null
}

step "1. emulated aarch64 rootfs ($PI, QEMU_CPU=$CPU) at $ROOT"
mkdir -p "$BASE"
exec 9>"$BASE/.edgekit-check.lock"
flock 9                                  # one check (and one setup) at a time on this rootfs
while pgrep -f "tools/arm64/setup.sh" >/dev/null; do
  echo "    setup.sh is running (started elsewhere); waiting for it..."; sleep 30
done
if ready; then
  echo "    in place; setup skipped"
else
  [ -f "$SETUP" ] || { echo "setup.sh not found at $SETUP (set SETUP=...)" >&2; exit 2; }
  BASE=$BASE ROOT=$ROOT PI=$PI bash "$SETUP" 2>&1 | tee "$OUT/setup.log"
  ready || { echo "setup.sh ran but the rootfs is not usable; see $OUT/setup.log" >&2; exit 1; }
fi

step "2. copy the edgekit working tree, the bundles and the test file into $HOST_DEST"
case $HOST_DEST in /*/opt/edgekit-check) ;; *) echo "refusing to clean $HOST_DEST" >&2; exit 2 ;; esac
rm -rf "$HOST_DEST"
mkdir -p "$HOST_DEST/src" "$HOST_DEST/bundles"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
  # tracked files plus new files not ignored by .gitignore, as they are on disk now
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -C "$HOST_DEST/src" -xf -
else
  tar -C "$REPO" --exclude=.venv --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=demo-output -cf - . | tar -C "$HOST_DEST/src" -xf -
fi
if [ -f "$BUNDLES/manifest.json" ]; then     # one bundle: keep its name so both sides report the same key
  cp -a "$BUNDLES" "$HOST_DEST/bundles/"
else
  for d in "$BUNDLES"/*/; do [ -f "$d/manifest.json" ] && cp -a "${d%/}" "$HOST_DEST/bundles/"; done
fi
TEST_IN=test.${TEST##*.}
cp "$TEST" "$HOST_DEST/$TEST_IN"
echo "    source $(du -sh "$HOST_DEST/src" | cut -f1), bundles: $(ls "$HOST_DEST/bundles" | tr '\n' ' ')($(du -sh "$HOST_DEST/bundles" | cut -f1))"

step "3. pip install \"$DEST/src[runtime]\" into $ARM_VENV (aarch64; emulated, slow)"
t=$(date +%s)
[ -x "$ROOT$ARM_VENV/bin/python" ] || arm "python3 -m venv $ARM_VENV"   # e.g. ARM_VENV=/opt/edgekit-venv: from scratch
if ! arm "$ARM_VENV/bin/pip install --prefer-binary '$DEST/src[runtime]'" >"$OUT/pip-arm.log" 2>&1; then
  tail -30 "$OUT/pip-arm.log" >&2
  echo "pip could not install the runtime extra on aarch64 (full log: $OUT/pip-arm.log)" >&2
  exit 1
fi
PIP_S=$(( $(date +%s) - t ))
arm "$ARM_VENV/bin/pip freeze" >"$OUT/pip-freeze-arm.txt"
grep -iE '^(edgekit|numpy|onnxruntime|openvino|ai-edge-litert|tokenizers|grpcio|protobuf)[=@ ]' "$OUT/pip-freeze-arm.txt" |
  sed 's/^/    /' || true
# Nothing heavy may have come with the runtime extra.
if grep -iqE '^(torch|transformers|tensorflow)==' "$OUT/pip-freeze-arm.txt"; then
  echo "the runtime extra pulled in torch/transformers/tensorflow on aarch64" >&2; exit 1
fi

echo "    $(arm "$ARM_VENV/bin/edgekit --version")"
if arm "$ARM_VENV/bin/edgekit bench --help" >/dev/null 2>&1; then echo "    edgekit bench --help: ok"
else echo "    note: 'edgekit bench --help' failed on aarch64 (not part of the pass/fail check)"; fi

step "4a. answers on x86 ($X86_PYTHON), $LIMIT texts"
t=$(date +%s)
"$X86_PYTHON" "$REPO/$SCRIPTS/answers.py" "$BUNDLES" "$TEST" "$OUT/answers-x86.json" --limit "$LIMIT"
X86_S=$(( $(date +%s) - t ))

step "4b. answers on aarch64 under emulation (QEMU_CPU=$CPU), $LIMIT texts - EMULATED, times mean nothing"
t=$(date +%s)
rm -f "$HOST_DEST/answers-arm.json"
arm "cd $DEST && $ARM_VENV/bin/python $DEST/src/$SCRIPTS/answers.py $DEST/bundles $DEST/$TEST_IN $DEST/answers-arm.json --limit $LIMIT --emulated"
cp "$HOST_DEST/answers-arm.json" "$OUT/answers-arm.json"
ARM_S=$(( $(date +%s) - t ))

step "5. compare x86 vs emulated aarch64"
set +e
# shellcheck disable=SC2086  # COMPARE_ARGS is a list of options
"$X86_PYTHON" "$REPO/$SCRIPTS/compare.py" "$OUT/answers-x86.json" "$OUT/answers-arm.json" \
  --json "$OUT/compare.json" ${COMPARE_ARGS:-} | tee "$OUT/compare.txt"
RC=${PIPESTATUS[0]}
set -e
TOTAL=$(( $(date +%s) - T0 ))
{
  echo "wall time, seconds (EMULATED aarch64 steps under qemu-user on $(nproc) x86 cores; not Pi timings):"
  echo "  pip install runtime extra (emulated): $PIP_S"
  echo "  answers x86 (native):                 $X86_S"
  echo "  answers aarch64 (EMULATED):           $ARM_S"
  echo "  whole check:                          $TOTAL"
} | tee "$OUT/timings.txt"
echo "results in $OUT (answers-x86.json, answers-arm.json, compare.txt, compare.json, pip-arm.log)"
[ "$RC" = 0 ] && echo "EMULATED CHECK PASSED" || echo "EMULATED CHECK FAILED (compare.py exit $RC)"
exit "$RC"
