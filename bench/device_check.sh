#!/usr/bin/env bash
# GPU readiness in one script: install the GPU wheels the README names, run the GPU and TensorRT
# tests and the timing lab, and write ONE results file (plus a log per step).
#
#   bash bench/device_check.sh            # results in $OUT (if set) or ./device_results
#   RESULTS_DIR=/some/dir bash bench/device_check.sh
#
# On an NVIDIA machine (`nvidia-smi` present and working):
#   1. pip install "tensorflow[and-cuda]==<installed TensorFlow version>"  (README: GPU support)
#   2. pip uninstall -y onnxruntime && pip install onnxruntime-gpu tensorrt  (README: TensorRT)
#   3. TensorFlow sees the GPU?  TensorRT status (engine.export.runtimes.tensorrt_status)
#   4. the GPU and TensorRT tests (the ones that skip with "UNVERIFIED" elsewhere)
#   5. the timing lab, CPU and GPU: python -m engine timing ... --json
# On a CPU machine: only the timing lab on the CPU with a small backbone; the GPU steps are listed
# as skipped with the reason. Every step has its own timeout; the whole stays under 10 minutes.
# Exit status 0 when every step that ran passed.
set -u
cd "$(dirname "$0")/.."
RESULTS="${RESULTS_DIR:-${OUT:-./device_results}}"
mkdir -p "$RESULTS"
STEPS="$RESULTS/steps.tsv"
: >"$STEPS"
START=$(date +%s)
PY="${PYTHON:-python}"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
# an isolated data folder: the check never touches the user's runs or caches
export LAB_HOME="${LAB_HOME_FOR_CHECK:-$RESULTS/lab_home}"

# step NAME TIMEOUT_S COMMAND...: run it, log to $RESULTS/NAME.log, record rc and seconds
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    echo "== $name (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    local rc=$?
    local secs=$(($(date +%s) - t0))
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$*" >>"$STEPS"
    echo "   rc=$rc in ${secs}s (log: $RESULTS/$name.log)"
    tail -n 3 "$RESULTS/$name.log" | sed 's/^/   | /'
}

skip() {  # skip NAME REASON
    printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$STEPS"
    echo "== $1: skipped ($2)"
}

GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >"$RESULTS/nvidia-smi.log" 2>&1; then
    GPU=1
    nvidia-smi >>"$RESULTS/nvidia-smi.log" 2>&1
fi
TF_VERSION=$($PY -c "import importlib.metadata as m; print(m.version('tensorflow'))" 2>/dev/null || echo "")

if [ "$GPU" = 1 ]; then
    if [ -n "$TF_VERSION" ]; then
        step install_tensorflow_cuda 240 $PY -m pip install --quiet "tensorflow[and-cuda]==$TF_VERSION"
    else
        step install_tensorflow_cuda 240 $PY -m pip install --quiet "tensorflow[and-cuda]"
    fi
    # the two ONNX Runtime wheels provide the same module: only the GPU one may stay
    step install_onnxruntime_gpu 180 bash -c "$PY -m pip uninstall -y onnxruntime >/dev/null 2>&1; \
        $PY -m pip install --quiet onnxruntime-gpu tensorrt"
    step tensorflow_sees_gpu 120 $PY -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); \
print(g); raise SystemExit(0 if g else 1)"
    step tensorrt_status 120 $PY -c "from engine.export.runtimes import tensorrt_status; s = tensorrt_status(); \
print(s); raise SystemExit(0 if s.get('available') else 1)"
    step gpu_tests 420 $PY -m pytest -q -p no:cacheprovider -rs \
        tests/test_bench_lab.py::test_gpu_timings_where_a_gpu_exists \
        tests/test_convert.py::test_tensorrt_runs_on_the_gpu \
        tests/test_convert.py::test_tensorrt_without_gpu_names_what_is_missing
    step timing_lab 300 $PY -m engine timing --backbones mobilenet_0.25_224,inception_v3 --source demo \
        --images 64 --batch_size 32 --train_steps 50 --label "device check (GPU)" --json
else
    why="no NVIDIA GPU here (nvidia-smi absent or failing)"
    for name in install_tensorflow_cuda install_onnxruntime_gpu tensorflow_sees_gpu tensorrt_status gpu_tests; do
        skip "$name" "$why"
    done
    step timing_lab 300 $PY -m engine timing --backbones mobilenet_0.25_128 --source demo \
        --images 32 --batch_size 16 --train_steps 20 --label "device check (CPU)" --json
fi

# one results file: machine facts, every step (rc, seconds, pytest summary, log tail), the lab's JSON
$PY - "$RESULTS" "$GPU" "$START" <<'EOF'
import json, sys, time
from pathlib import Path

results, gpu, start = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
steps = []
for line in (results / "steps.tsv").read_text().splitlines():
    name, rc, secs, what = line.split("\t", 3)
    log = results / f"{name}.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    row = {"step": name, "status": "skipped" if rc == "skipped" else ("ok" if rc == "0" else "failed"),
           "rc": None if rc == "skipped" else int(rc), "seconds": int(secs),
           ("reason" if rc == "skipped" else "command"): what}
    if rc in ("124", "137"):
        row["status"] = "timed out"
    if text:
        row["log"] = log.name
        row["log_tail"] = text.splitlines()[-15:]
        summary = [l for l in text.splitlines() if " passed" in l or " skipped" in l or " failed" in l]
        if name.endswith("tests") and summary:
            row["pytest"] = summary[-1].strip("= ")
        if name == "timing_lab":
            for l in reversed(text.splitlines()):
                if l.startswith("{"):
                    try:
                        row["report"] = json.loads(l)
                    except ValueError:
                        pass
                    break
    steps.append(row)
try:
    from engine.machine import machine_facts
    machine = machine_facts(include_tensorflow=True)
except Exception as exc:  # the facts are a courtesy: the steps above are the check
    machine = {"error": str(exc)}
nvsmi = results / "nvidia-smi.log"
out = {
    "gpu_machine": gpu,
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "seconds": int(time.time()) - start,
    "machine": machine,
    "nvidia_smi": nvsmi.read_text(errors="replace").splitlines()[:30] if nvsmi.is_file() else None,
    "steps": steps,
    "skipped": [s["step"] for s in steps if s["status"] == "skipped"],
    "passed": all(s["status"] in ("ok", "skipped") for s in steps),
}
(results / "results.json").write_text(json.dumps(out, indent=1, default=str))
print(f"results: {results / 'results.json'} ({'all passed' if out['passed'] else 'FAILURES'}; "
      f"skipped: {', '.join(out['skipped']) or 'nothing'}; {out['seconds']} s)")
raise SystemExit(0 if out["passed"] else 1)
EOF
