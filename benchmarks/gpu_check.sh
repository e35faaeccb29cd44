#!/usr/bin/env bash
# The TensorRT path on a machine with an NVIDIA GPU and TensorRT, in one command
# and under five minutes:
#   1. builds fp16 and int8 engines for the models in engines/ (tiny test
#      models, with a QDQ INT8 quality head, when engines/ has no manifest yet),
#   2. runs the shared backend suite and the trt tests (pytest),
#   3. runs a 20-second benchmark (`edge-assist bench --backend trt`, scenario
#      $BENCH_SCENARIO, default live-30), if this checkout has the bench command,
#   4. writes benchmarks/results/gpu_check-<host>-<time>.json (with the machine
#      it ran on) and the step logs next to it.
# Exit status: 0 when every step that ran passed, 1 when one failed, 2 when the
# trt backend is not usable here (the reason is printed and recorded).
#
# Environment: PYTHON (default .venv/bin/python, else python3), ENGINES (default
# engines), BENCH_SCENARIO (default live-30), GPU_CHECK_BUDGET_S (default 290),
# EDGE_ASSIST_ENGINE_CACHE (where the engines are cached; the tests use a cache
# dir of their own under $TMPDIR).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
EA=("$PY" -m edge_assist)
BUDGET=${GPU_CHECK_BUDGET_S:-290}
START=$(date +%s)
HOST=$(hostname -s 2>/dev/null || echo host)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
NAME="gpu_check-${HOST}-${STAMP}"
OUT="benchmarks/results/${NAME}"
mkdir -p "$OUT"
STEPS="$OUT/steps.tsv"
: > "$STEPS"

say() { printf 'gpu_check: %s\n' "$*" >&2; }
remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP_S CMD...: run with a time limit (the smaller of CAP_S and what
# is left of the budget); stdout -> NAME.out, stderr -> NAME.log and the terminal.
step() {
    local name=$1 cap=$2; shift 2
    local left; left=$(remaining)
    local limit=$(( cap < left - 5 ? cap : left - 5 ))
    if [ "$limit" -le 5 ]; then
        say "$name: skipped, the ${BUDGET} s budget is spent"
        printf '%s\t%s\t%s\t%s\n' "$name" "124" "0" "skipped: out of time" >> "$STEPS"
        return 124
    fi
    say "$name (at most ${limit} s): $*"
    local t0; t0=$(date +%s)
    # stdout to NAME.out; stderr through tee (a pipeline, so the log is complete when it returns)
    { timeout --kill-after=10 "$limit" "$@" 2>&1 1>&3 3>&- | tee "$OUT/$name.log" >&2; } 3>"$OUT/$name.out"
    local rc=$?  # pipefail: the command's status unless tee failed
    local dt=$(( $(date +%s) - t0 ))
    local note=""
    [ "$rc" -eq 124 ] && note="timed out after ${limit} s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$note" >> "$STEPS"
    say "$name: exit $rc after ${dt} s${note:+ ($note)}"
    return "$rc"
}

note_step() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "0" "$3" >> "$STEPS"; say "$1: $3"; }

write_summary() {
    "$PY" - "$OUT" "$NAME" "$BUDGET" "$START" <<'PYEOF'
import json, os, platform, subprocess, sys, time
from pathlib import Path

out, name, budget, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def load(p):
    try:
        text = (out / p).read_text()
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"raw_stdout": text[-4000:]} if text.strip() else None

def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None

steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    n, rc, secs, note = (line.split("\t") + ["", "", "", ""])[:4]
    log = out / f"{n}.log"
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    steps.append({"step": n, "exit": int(rc), "seconds": int(secs), "note": note or None, "log_tail": tail})

tegra = Path("/etc/nv_tegra_release")
machine = {
    "host": platform.node(), "os": platform.platform(), "arch": platform.machine(), "python": platform.python_version(),
    "nvidia_smi": run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]),
    "jetson_release": tegra.read_text().strip() if tegra.exists() else None,
}
summary = {
    "name": name,
    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "wall_seconds": int(time.time()) - start,
    "budget_seconds": budget,
    "machine": machine,
    "models": (out / "models.txt").read_text().strip() if (out / "models.txt").exists() else None,
    "backends": load("backends.out"),
    "build_fp16": load("build_fp16.out"),
    "build_int8": load("build_int8.out"),
    "tests": {"junit": str(out / "pytest.xml") if (out / "pytest.xml").exists() else None,
              "summary": ((out / "tests.out").read_text().strip().splitlines() or [None])[-1] if (out / "tests.out").exists() else None},
    "bench": load("bench.out"),
    "steps": steps,
}
dest = out.parent / f"{name}.json"
dest.write_text(json.dumps(summary, indent=2) + "\n")
print(dest)
PYEOF
}

finish() {
    local rc=$1
    local dest; dest=$(write_summary) || dest="(summary could not be written)"
    say "results: $dest (logs in $OUT/)"
    exit "$rc"
}

# 0. Is the trt backend usable here at all?
step backends 60 "${EA[@]}" backends --json
if ! "$PY" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["trt"]["available"] else 1)' "$OUT/backends.out" 2>/dev/null; then
    reason=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["trt"]["reason"])' "$OUT/backends.out" 2>/dev/null || echo "edge-assist backends failed")
    say "the trt backend is not usable here: $reason"
    note_step trt_unavailable 2 "$reason"
    finish 2
fi

# Models: engines/ if it has a manifest, else tiny test models (with a QDQ INT8 quality head).
ENGINES=${ENGINES:-engines}
if [ -f "$ENGINES/manifest.json" ]; then
    echo "$ENGINES (engines/manifest.json)" > "$OUT/models.txt"
else
    say "$ENGINES/manifest.json is missing (run \`make models\` for the real models); using tiny test models"
    ENGINES="$OUT/tiny_engines"
    "$PY" - "$ENGINES" <<'PYEOF' || finish 1
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
import numpy as np
from tiny_models import write_tiny_engines
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from edge_assist.manifest import sha256_file

root = write_tiny_engines(Path(sys.argv[1]))
class Frames(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.it = iter([{"image": rng.random((1, 1, 64, 64), dtype=np.float32)} for _ in range(16)])
    def get_next(self):
        return next(self.it, None)
q = root / "quality_int8.onnx"
quantize_static(str(root / "quality.onnx"), str(q), Frames(), quant_format=QuantFormat.QDQ)
m = json.loads((root / "manifest.json").read_text())
m["heads"]["quality"].update(int8_file=q.name, int8_sha256=sha256_file(q))
(root / "manifest.json").write_text(json.dumps(m, indent=2))
PYEOF
    echo "tiny test models ($ENGINES; engines/manifest.json missing)" > "$OUT/models.txt"
fi

failed=0
# 1. Engines: fp16, then int8 (from the QDQ models `edge-assist calibrate` writes).
step build_fp16 120 "${EA[@]}" engines build --engines "$ENGINES" --precision fp16 --json || failed=1
step build_int8 60 "${EA[@]}" engines build --engines "$ENGINES" --precision int8 --json
rc=$?
if [ "$rc" -eq 2 ] && grep -q "no head has an INT8 model" "$OUT/build_int8.log"; then
    note_step build_int8_skipped 0 "no INT8 (QDQ) models in $ENGINES: run \`edge-assist calibrate\` first"
elif [ "$rc" -ne 0 ]; then
    failed=1
fi

# 2. The shared backend suite and the trt tests (their engines in a cache of their own).
test_cache=${TMPDIR:-/tmp}/edge-assist-gpu-check-test-engines
step tests 90 env EDGE_ASSIST_ENGINE_CACHE="$test_cache" "$PY" -m pytest -q -rs -p no:cacheprovider \
    --junitxml="$OUT/pytest.xml" tests/test_backends.py tests/test_trt*.py || failed=1

# 3. A 20-second benchmark, where this checkout has `edge-assist bench`. Its
#    precision is one whose engines step 1 cached (bench has no fp16 yet): int8
#    (INT8 heads plus the FP32 heads built alongside) when that build ran, else
#    fp32 (then the bench builds the FP32 engines first, visibly, in its log).
BENCH_PRECISION=fp32
grep -q '"precision": "int8"' "$OUT/build_int8.out" 2>/dev/null && BENCH_PRECISION=int8
if "${EA[@]}" bench --help > /dev/null 2>&1; then
    step bench 75 "${EA[@]}" bench --backend trt --duration 20 --json --engines "$ENGINES" \
        --scenario "${BENCH_SCENARIO:-live-30}" --precision "$BENCH_PRECISION" --no-baseline --no-plots \
        --out "$OUT/bench" || failed=1
else
    note_step bench_skipped 0 "\`edge-assist bench\` is not available in this checkout (it is written separately); no benchmark was run"
fi

finish "$failed"
