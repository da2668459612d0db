#!/usr/bin/env bash
# Builds (or refreshes) the Unsloth environment: `make test-unsloth` runs this, then the tests.
#   bash plugins/unsloth/install-venv.sh [VENV]      (default .venv-unsloth, from the repo root)
# Unsloth pins its own transformers / trl / torch, so it gets a venv of its own. Idempotent: a
# stamp holds a hash of this script and the pyproject files it installs; when nothing changed
# the run takes well under a second.
#
# The recipe: unsloth 2026.10.9 (the first release with a CPU backend) requires
# certifi>=2026.10.19, which some package indexes lack, so a plain `pip install unsloth` can
# resolve to 2026.10.7, which refuses to import without a GPU. Install 2026.10.7 with its
# dependencies, then 2026.10.9 and its zoo without them (their other requirements are the same).
set -euo pipefail

VENV="${1:-.venv-unsloth}"
PYTHON="${PYTHON:-python3}"
UNSLOTH_DEPS="${UNSLOTH_DEPS:-unsloth==2026.10.7}"
UNSLOTH_PINS="${UNSLOTH_PINS:-unsloth==2026.10.9 unsloth_zoo==2026.10.9}"
STAMP="$VENV/.installed-unsloth"

want=$(cat "$0" pyproject.toml plugins/unsloth/pyproject.toml plugins/peft/pyproject.toml \
  plugins/bitsandbytes/pyproject.toml | sha256sum | cut -d' ' -f1)
want="$want $UNSLOTH_DEPS $UNSLOTH_PINS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# Unsloth itself only when the pinned versions are not there yet (a refresh after a pyproject
# change only reinstalls tune and the plugins).
# shellcheck disable=SC2086
if ! "$VENV/bin/python" - $UNSLOTH_PINS 2>/dev/null <<'EOF'
import sys
from importlib.metadata import version

sys.exit(any(version(n) != v for n, v in (pin.split("==") for pin in sys.argv[1:])))
EOF
then
  # shellcheck disable=SC2086
  "${PIP[@]}" $UNSLOTH_DEPS
  # shellcheck disable=SC2086
  "${PIP[@]}" --no-deps $UNSLOTH_PINS
fi
# tune and the plugins the Unsloth recipe names (lora/nf4 fallback, adamw_8bit), editable; pip
# keeps Unsloth's versions where they satisfy tune's requirements.
"${PIP[@]}" -e ".[test]" -e plugins/peft -e plugins/bitsandbytes -e "plugins/unsloth[test]"
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version

from packaging.version import Version

got = version("unsloth")
assert Version(got) >= Version("2026.10.9"), f"unsloth {got}: no CPU backend"
print("unsloth", got, "| unsloth_zoo", version("unsloth_zoo"), "| torch", version("torch"),
      "| transformers", version("transformers"), "| trl", version("trl"), "| peft", version("peft"))
EOF
echo "$want" > "$STAMP"
