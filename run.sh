#!/usr/bin/env bash
# FaceRefine developer entry point. Creates .venv on first use, then:
#   ./run.sh test            run the test suite (what CI runs)
#   ./run.sh <command> ...   same as `python -m facerefine <command> ...` (restore, crop, score, bench, ...)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${FACEREFINE_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
  # re-install when pyproject.toml changes (new dependencies)
  stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  [ "$(cat "$VENV/.facerefine-ready" 2>/dev/null)" = "$stamp" ] && return 0
  # progress on stderr for the first set-up (minutes, several GB); pip shows its own progress bars
  say() { echo "run.sh: $*" >&2; }
  if [ ! -x "$PY" ]; then say "[1/4] creating the virtual environment $VENV"; python3 -m venv "$VENV"; fi
  say "[2/4] updating pip"
  "$PY" -m pip install -q --upgrade pip
  # torch comes first and explicitly (requirements.txt never pins it; see README "Install").
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    say "[3/4] installing torch + torchvision (about 7 GB, a few minutes; progress below)"
    case "$(uname -m)" in
      aarch64|arm64) "$PY" -m pip install --progress-bar on "torch==2.9.1" "torchvision==0.24.1" ;;
      *)             "$PY" -m pip install --progress-bar on "torch==2.14.1" "torchvision==0.29.1" ;;
    esac
  else
    say "[3/4] torch + torchvision already installed"
  fi
  say "[4/4] installing FaceRefine and its dependencies (gradio, pyiqa, facexlib, spandrel...)"
  "$PY" -m pip install -q -e ".[dev,standalone]"
  # eval/test extra (dlib itself, for the identity-network parity test); optional: the test skips without it
  "$PY" -m pip install -q -e ".[eval]" || echo "run.sh: the eval extra (dlib-bin) did not install; dlib parity tests will skip"
  # the optional Ray extra, so the Ray folder-restore tests run (never needed by ComfyUI, A1111 or the app)
  "$PY" -m pip install -q -e ".[ray]" || echo "run.sh: the ray extra did not install; Ray tests will skip"
  echo "$stamp" > "$VENV/.facerefine-ready"
  say "set-up done"
}

setup
cmd="${1:-}"
if [ "$cmd" = "test" ]; then
  shift
  export FACEREFINE_OFFLINE=1 HF_HUB_OFFLINE=1
  exec "$PY" -m pytest tests "$@"
fi
exec "$PY" -m facerefine "$@"
