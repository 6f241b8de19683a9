#!/usr/bin/env bash
# The one GPU check: both benchmarks on CUDA, the CUDA tests, and `serve` on CUDA
# screening a batch of studies end to end. Results go under $OUT (default ./gpu-check).
#
#   bench/gpu_check.sh            # on a machine with a GPU: under 8 minutes (step limits 470 s)
#   bench/gpu_check.sh --dry-run  # the same plumbing on a CPU, small sizes (~5 minutes)
#
# Installs nothing. Needs the project's virtual environment (torch with CUDA: on
# x86_64 Linux `pip install torch==2.14.1 torchvision==0.29.1` is a CUDA build; plus
# timm, safetensors, pydicom, pynetdicom, highdicom, SQLAlchemy, pytest): $PYTHON, else
# .venv/bin/python, else python3. Every step writes its own file; a failed step is
# recorded in summary.txt and the others still run. Exit status: failed steps.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-}
[ -z "$PY" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
[ -z "$PY" ] && PY=python3
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
X=1  # time limits: x3 for a dry run on a small CPU
[ $DRY = 1 ] && X=3

if [ $DRY = 1 ]; then
  DEV=cpu STUDIES=2
  INF=(--device cpu --model demo --images 6 --plain-reps 1)
  TRN=(--device cpu --skip-full --steps 1)
  TESTS=(tests/core/test_device.py -q -x -k "not pretraining")
else
  DEV=cuda STUDIES=8
  INF=(--device cuda --images 55 --gpu-studies 8)
  TRN=(--device cuda --full-batch 8 --full-steps 3 --steps 3)
  TESTS=(tests/core/test_device.py -q)
fi
failed=0
step() {  # step NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  [ $rc = 0 ] || failed=$((failed + 1))
}
: >"$OUT/summary.txt"
{ date -u; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} >"$OUT/machine.txt" 2>&1
[ $DRY = 1 ] || "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "no CUDA device visible to $PY; use --dry-run on a CPU" | tee -a "$OUT/summary.txt"; exit 1; }

step tests $((90 * X)) "$PY" -m pytest "${TESTS[@]}" -p no:cacheprovider
step bench_inference $((120 * X)) "$PY" bench/bench_inference.py "${INF[@]}" --json "$OUT/bench_inference.json"
step bench_train $((120 * X)) "$PY" bench/bench_train.py "${TRN[@]}" --json "$OUT/bench_train.json"
step serve $((140 * X)) "$PY" - "$OUT" "$DEV" "$STUDIES" <<'PYEOF'
"""serve on DEV with the bundled demo model screens N phantom studies end to end."""
import json, sys, tempfile, threading, time
from pathlib import Path
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from hyperct_core.demo import demo_checkpoint_path
from tests.agent.pipeline_env import Serve, agent_config, chest_series

out, device, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
got: list[float] = []
lock = threading.Lock()

def on_store(event: evt.Event) -> int:
    with lock:
        got.append(time.time())
    return 0

pacs = AE("GPUPACS")
pacs.supported_contexts = AllStoragePresentationContexts
server = pacs.start_server(("127.0.0.1", 0), block=False,
                           evt_handlers=[(evt.EVT_C_STORE, on_store)])
with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    config = agent_config(work, demo_checkpoint_path(),
                          [("pacs", "GPUPACS", "127.0.0.1", server.server_address[1])])
    text = config.read_text().replace('dtype = "float32"', f'device = "{device}"\ndtype = "auto"')
    config.write_text(text.replace('level = "debug"', 'level = "info"'))
    studies = [chest_series(work / f"s{i}", seed=200 + i) for i in range(n)]
    serve = Serve(config)
    result: dict = {"device_asked": device, "studies": n}
    try:
        t0 = time.monotonic()
        while not serve.events("model loaded") and time.monotonic() - t0 < 60:
            time.sleep(0.2)
        result["model_loaded"] = (serve.events("model loaded") or [None])[0]
        scu = AE("MODALITY")
        scu.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
        sent = time.time()
        for files in studies:
            assoc = scu.associate("127.0.0.1", serve.port, ae_title="HYPERCT")
            for p in files:
                assoc.send_c_store(dcmread(p))
            assoc.release()
        while len(got) < 3 * n and time.time() - sent < 60:
            time.sleep(0.2)
        result["objects_back"] = len(got)
        result["seconds_last_sent_to_last_report"] = (max(got) - sent) if got else None
        result["batches"] = serve.events("batch screened")
    finally:
        serve.stop()
        server.shutdown()
        (out / "serve_log.jsonl").write_text("".join(serve.lines))
(out / "serve.json").write_text(json.dumps(result, indent=1, default=str))
loaded = result["model_loaded"] or {}
ok = str(loaded.get("device", "")).startswith(device) and result["objects_back"] == 3 * n
print(json.dumps({"ok": ok, "device": loaded.get("device"), "objects": result["objects_back"]}))
sys.exit(0 if ok else 1)
PYEOF
echo "failed steps: $failed" | tee -a "$OUT/summary.txt"
exit $failed
