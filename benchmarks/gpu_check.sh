#!/usr/bin/env bash
# The GPU check, one short script: the CUDA tests, then the demo recipe's AR trained in bf16 on one CUDA GPU, its NAR likewise
# under torchrun (a process group on nccl, DDP), then decoding on the GPU against the CPU
# (benchmarks/decode_speed.py). WORKDIR holds the demo's token cache (`harmonica preprocess --project demo`);
# OUT receives the log, the GPU run's MLflow store and the EMA checkpoints of both models (ema + meta + codec,
# the NAR's split in 15 MB parts), to score with `harmonica evaluate` where whisper is installed.
#
#   bash benchmarks/gpu_check.sh WORKDIR OUT [key=value ...]
set -uo pipefail
W=$1
OUT=$2
shift 2
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'bf16:', torch.cuda.is_bf16_supported())"

# the CUDA tests (CI has no GPU): bf16 training steps with every random draw, sampled decoding
$PY -m pytest -q -p no:cacheprovider tests/training/test_cuda.py -rs

latest() { ls -d "$W"/checkpoints/demo/"$1"/*/ckpt/step_* | sort | tail -1; }

start=$(date +%s)
$PY -m harmonica.cli train --model-type ar --project demo --workdir "$W" --run-name gpu-ar-bf16 --no-progress \
    training.ar.device=cuda training.ar.precision=bf16 "$@" || exit 1
ar_s=$(( $(date +%s) - start ))
start=$(date +%s)
$PY -m torch.distributed.run --nproc-per-node 1 -m harmonica.cli train --model-type nar --project demo \
    --workdir "$W" --run-name gpu-nar-bf16-torchrun --no-progress training.nar.device=cuda training.nar.precision=bf16 "$@" \
    || exit 1
nar_s=$(( $(date +%s) - start ))
echo "wall seconds: AR $ar_s, NAR (torchrun) $nar_s"
AR=$(latest ar)
NAR=$(latest nar)
echo "checkpoints: $AR $NAR"

$PY benchmarks/decode_speed.py --workdir "$W" --ar "$AR" --nar "$NAR" --devices ${DEVICES:-cuda cpu} --utterances 40 \
    "$@" > "$OUT/decode_speed.json"
cat "$OUT/decode_speed.json"

$PY - "$W/mlflow.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("""select r.name, m.key, m.value from latest_metrics m join runs r on r.run_uuid = m.run_uuid
                     where m.key in ('throughput/steps_per_sec', 'throughput/tokens_per_sec', 'val_ema/loss',
                                     'val_ema/text_gain', 'val_ema/ce_margin', 'system/gpu_0_memory_usage_megabytes')
                     order by r.name, m.key""").fetchall()
for name, key, value in rows:
    print(f"{name:28s} {key:32s} {value:.4f}")
for name, key, value in db.execute("""select r.name, t.key, t.value from tags t join runs r on r.run_uuid = t.run_uuid
                                      where t.key in ('harmonica.device', 'harmonica.world_size')"""):
    print(f"{name:28s} {key:32s} {value}")
EOF

for kind in ar nar; do
    src=$(latest $kind)
    tar -czf "$OUT/$kind.tgz" -C "$src" ema.safetensors meta.json codec
done
split -b 15M "$OUT/nar.tgz" "$OUT/nar.tgz.part-" && rm "$OUT/nar.tgz"
gzip -c "$W/mlflow.db" > "$OUT/mlflow.db.gz"
ls -la "$OUT"
