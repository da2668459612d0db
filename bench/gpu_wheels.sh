#!/usr/bin/env bash
# Build the wheelhouse bench/gpu_proof.py carries to the lent GPU machine (bench/gpu_proof.md).
#
# The machine starts bare with torch, transformers, peft, accelerate, pluggy, click, rich,
# pyarrow, matplotlib, safetensors, tokenizers and pytest, no network, and takes 64 MiB per
# call (the repository included). This puts in WHEELHOUSE (default .whl/, git-ignored through
# .git/info/exclude as the device notes advise):
#   - tune and the plugins the proof uses (peft, liger, bitsandbytes, beacon), built from this
#     checkout as it is now (rerun this script after changing the code);
#   - what tune imports that the image lacks: pydantic, pydantic-core, annotated-types,
#     typing-inspection, typing-extensions (the versions this .venv tests with);
#   - the optional wheels: liger-kernel (pure Python; Triton is on the image) and bitsandbytes
#     (its wheel holds the CUDA 13.0 library torch 2.11+cu130 needs);
#   - data/alpaca_en_demo.json, copied from ../shared/data when this workspace has it.
# and prints the sizes against the 64 MiB a call carries.
#
#     bash bench/gpu_wheels.sh            # then: run(..., carry=[".whl"]) as in gpu_proof.md
#     WHEELHOUSE=/tmp/w bash bench/gpu_wheels.sh   # elsewhere (nothing under .git touched)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PY:-$REPO/.venv/bin/python}
WHEELHOUSE=${WHEELHOUSE:-$REPO/.whl}
LIMIT=$((64 * 1024 * 1024))
LIGER_KERNEL=${LIGER_KERNEL:-0.8.5}
PLUGINS="peft liger bitsandbytes beacon"

mkdir -p "$WHEELHOUSE/data"
if [ "$WHEELHOUSE" = "$REPO/.whl" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
fi
rm -f "$WHEELHOUSE"/*.whl # one version of each: two would stop the install there

# The versions this checkout is tested with (the .venv's), so the GPU runs the same pydantic.
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PINS=""
for dist in pydantic pydantic-core annotated-types typing-inspection typing-extensions bitsandbytes; do
    PINS="$PINS $dist==$(version "$dist")"
done
PINS="$PINS liger-kernel==$LIGER_KERNEL"

# Python 3.12, x86-64 manylinux: the lent machine's, whatever this machine is.
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$WHEELHOUSE" $PINS

# tune and its plugins from a copy of the checkout (setuptools would leave build/ folders here).
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./.venv-unsloth --exclude=./.whl \
    --exclude='*.egg-info' --exclude=./runs --exclude='__pycache__' -cf - . | tar -C "$SRC" -xf -
PLUGIN_DIRS=""
for plugin in $PLUGINS; do PLUGIN_DIRS="$PLUGIN_DIRS $SRC/plugins/$plugin"; done
# shellcheck disable=SC2086
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELHOUSE" "$SRC" $PLUGIN_DIRS

SHARED_DATA="$REPO/../shared/data/alpaca_en_demo.json"
if [ -f "$SHARED_DATA" ]; then
    cp "$SHARED_DATA" "$WHEELHOUSE/data/"
else
    echo "no $SHARED_DATA: the proof will train on synthetic rows with its lengths"
fi

echo
echo "wheelhouse $WHEELHOUSE:"
(cd "$WHEELHOUSE" && find . -type f -printf '%s\t%p\n' | sort -n | awk -F'\t' '{printf "  %8.2f MiB  %s\n", $1/1048576, $2}')
carried=$(find "$WHEELHOUSE" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
# what travels besides: tracked files and untracked ones git does not ignore
tree=$(
    {
        git ls-files -z
        git ls-files -z --others --exclude-standard
    } | xargs -0 -r stat -c '%s' 2>/dev/null | awk '{s+=$1} END {print s+0}'
)
if [ "$WHEELHOUSE" != "$REPO/.whl" ]; then
    echo "(outside the repository: copy it to .whl/ before the call)"
fi
total=$((carried + tree))
awk -v c="$carried" -v t="$tree" 'BEGIN {
    printf "carried %.1f MiB + working tree %.1f MiB = %.1f MiB of the 64 MiB a call takes\n",
        c / 1048576, t / 1048576, (c + t) / 1048576 }'
if [ "$total" -gt "$LIMIT" ]; then
    echo "over 64 MiB: leave bitsandbytes out (item 3 then says it was not carried)" >&2
    exit 1
fi
