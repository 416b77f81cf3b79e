#!/usr/bin/env bash
# Reproduce the figures of issue 7 in one folder:
#   1. profile: global (DeiT-Tiny) vs windowed (Swin-T) vs linear (EfficientViT-B0) attention vs a CNN
#      (MobileNetV3-Large) at 224, 384 and 512 px -> profile.txt, profile.png
#   2. export MobileViT-XXS to TFLite (plain and fused input), ONNX and ExecuTorch
#   3. bench them side by side against torch eager, with the GEMM peak, the memory target (vs the bare
#      ai-edge-litert interpreter) and the cold-start target -> bench.md
#   4. eval the Fashion-MNIST ViT, float vs TFLite, on the real test split -> eval.txt
#   5. report.html: everything above, self-contained
# Usage: benchmarks/profile_bench_report.sh [OUT_DIR] [THREADS]
set -euo pipefail

OUT=${1:-edgevit-bench}
THREADS=${2:-2}
mkdir -p "$OUT"
# Every command (export included) records into this run's own database.
export EDGEVIT_RESULTS_DB="$OUT/results.sqlite"
export OMP_WAIT_POLICY=PASSIVE

edgevit profile --resolutions 224 384 512 --plot "$OUT/profile.png" --components | tee "$OUT/profile.txt"

edgevit export mobilevit_xxs --target tflite --out "$OUT" --force
edgevit export mobilevit_xxs --target tflite --fused-input --out "$OUT/mobilevit_xxs_tflite_fp32_fused.tflite" --force
edgevit export mobilevit_xxs --target onnx --out "$OUT" --force
edgevit export mobilevit_xxs --target executorch --out "$OUT" --force

edgevit bench "$OUT"/mobilevit_xxs_tflite_fp32.tflite "$OUT"/mobilevit_xxs_tflite_fp32_fused.tflite \
    "$OUT"/mobilevit_xxs_onnx_fp32.onnx "$OUT"/mobilevit_xxs_executorch_fp32.pte \
    --torch mobilevit_xxs --threads "$THREADS" --warmup 5 --runs 30 --format md --out "$OUT/bench.md"

if [ -d /usr/share/datasets/fashion-mnist ]; then
    WEIGHTS=()
    python -c 'import sys; from edgevit.models._registry import WEIGHTS_DIR as W; sys.exit(not (W / "vit_fmnist_tiny.safetensors").is_file())' \
        && WEIGHTS=(--pretrained)
    edgevit export vit_fmnist_tiny --target tflite --out "$OUT" --force "${WEIGHTS[@]}"
    edgevit eval "$OUT"/vit_fmnist_tiny_tflite_fp32.tflite --data fashion-mnist --float vit_fmnist_tiny \
        "${WEIGHTS[@]}" | tee "$OUT/eval.txt"
fi

edgevit report --out "$OUT/report.html" --title "edgevit: profile, bench and eval ($(hostname), $THREADS threads)"
