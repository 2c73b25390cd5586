#!/usr/bin/env bash
# Spoken digits for `data.name: spoken_digits`, made offline: installs Debian's espeak-ng if missing,
# then synthesises the ten digit words in 64 voices × 3 speeds × 2 pitches with background noise
# (3,840 one-second clips, 120 MB) into a cache directory, once (about 2 minutes).
# Usage: bash scripts/get-spoken-digits.sh [DIR]   (default $DISTILL_CACHE/spoken_digits or
#        ~/.cache/distill/spoken_digits; pass data.path=DIR to a run when you choose another)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DIR=${1:-$(.venv/bin/python -c "from distill.data.speech import default_dir; print(default_dir())")}
if [ -f "$DIR/manifest.json" ] && [ -f "$DIR/spoken_digits.safetensors" ]; then
  echo "spoken digits: already in $DIR"; exit 0
fi
if ! command -v espeak-ng >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng
fi
.venv/bin/python -m distill.data.speech --out "$DIR"
