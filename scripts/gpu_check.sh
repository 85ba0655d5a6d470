#!/usr/bin/env bash
# GPU readiness check of sacvit, in ≤ 8 minutes on one GPU. Everything lands in one folder.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        (default: runs/gpu_check)
#
# 1. the test suite, including tests/test_cuda.py (CUDA parity, bf16 autocast, torch.compile, and
#    the forward passes under torch.cuda.set_sync_debug_mode: no host sync but the exit decision);
# 2. sacvit bench --device cuda --amp bf16 at batch 256 on DeiT-S geometry, without and with --compile;
# 3. a 200-step training smoke run of SAC-ViT on CUDA under torch.cuda.set_sync_debug_mode("warn"),
#    counting the synchronising calls per step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { make venv >/dev/null && PY=.venv/bin/python; }
status=0
step() { echo "== $1" | tee -a "$OUT/summary.txt"; }

step "environment"
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$OUT/summary.txt"

step "test suite (CUDA tests included)"
timeout 240 "$PY" -m pytest -q -x -p no:cacheprovider 2>&1 | tee "$OUT/pytest.txt" | tail -3 | tee -a "$OUT/summary.txt" || status=1

step "bench, bf16, batch 256, eager"
timeout 90 "$PY" -m sacvit.cli bench --device cuda --amp bf16 --batch 256 --repeats 20 --latency-repeats 50 \
    --methods deit,deit-ee,sacvit --exit-share 0.9,0.77,0.5 --profile --out "$OUT/bench_eager" 2>&1 \
    | tee "$OUT/bench_eager.txt" | tail -8 | tee -a "$OUT/summary.txt" || status=1

step "bench, bf16, batch 256, torch.compile"
timeout 150 "$PY" -m sacvit.cli bench --device cuda --amp bf16 --batch 256 --repeats 20 --latency-repeats 50 \
    --methods deit,deit-ee,sacvit --exit-share 0.9,0.77,0.5 --compile --out "$OUT/bench_compile" 2>&1 \
    | tee "$OUT/bench_compile.txt" | tail -8 | tee -a "$OUT/summary.txt" || status=1

step "200 training steps under torch.cuda.set_sync_debug_mode('warn')"
timeout 120 "$PY" - "$OUT" <<'PYEOF' 2>&1 | tee "$OUT/train_sync.txt" | tail -6 | tee -a "$OUT/summary.txt" || status=1
import sys, time, warnings
import torch
from sacvit.engine.train import TrainConfig, train

out = sys.argv[1]
cfg = TrainConfig(model="sacvit_deit_small_patch16_224", data="synthetic", img_size=224, train_length=64 * 200,
                  val_length=256, epochs=1, batch_size=64, lr=1e-4, warmup_epochs=0.1, select_after=0.25,
                  device="cuda", out_dir=f"{out}/train_smoke", cache=False)
torch.cuda.set_sync_debug_mode("warn")
t0 = time.time()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    train(cfg)
torch.cuda.set_sync_debug_mode(0)
syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
print(f"200 steps + validation in {time.time() - t0:.1f} s (sacvit train, DeiT-S geometry, bf16 autocast)")
print(f"synchronising calls: {len(syncs)} ({len(syncs) / 200:.2f} per step)")
for msg in sorted(set(syncs))[:8]:
    print("  ", msg)
PYEOF

step "done (status $status)"
exit $status
