#!/usr/bin/env bash
# usage: transformers-serve.sh PORT   serves the tiny random Llama at http://127.0.0.1:PORT/v1
# (/v1/chat/completions, /v1/completions, /v1/models), from install.sh's venv-tf and tiny-llama.
# The model id is exactly the model path given here ($ROOT/tiny-llama); another id gets a 400.
# --continuous-batching batches requests in flight (without it they run one after another); the
# --cb-* caps keep its KV cache small (uncapped it reserved 6.4 GB). Flags as checked in
# /work/shared/recipes/openai-servers-on-cpu.md.
set -euo pipefail
ROOT="${GPUFLEET_SERVER_VENVS:-$HOME/.cache/gpufleet-ci/servers}"
VENV="$ROOT/venv-tf"
[[ -x "$VENV/bin/transformers" && -f "$ROOT/tiny-llama/config.json" ]] \
    || { echo "no transformers serve or tiny-llama under $ROOT: run deploy/servers/install.sh" >&2; exit 3; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# One intra-op thread unless told otherwise: on 2 cores, torch's default (one per core) spun against
# the server's own threads: 16 req/s at concurrency 1 with a p99 of ~450 ms, against 31 req/s and
# 38 ms with one (bench/openai_forward.py, same machine, same run of the bench).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$VENV/bin/transformers" serve "$ROOT/tiny-llama" --device cpu --continuous-batching \
    --cb-num-blocks 128 --cb-block-size 32 --cb-max-batch-tokens 1024 \
    --host 127.0.0.1 --port "${1:?usage: transformers-serve.sh PORT}"
