#!/usr/bin/env bash
# The two set-up commands of the README:  bash dev.sh demo   |   bash dev.sh test
# Each creates .venv at the repo root when missing (or when pyproject.toml changed) and installs the package into it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

ensure_venv() {
  local stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
  if [ -f "$stamp" ] && [ -x .venv/bin/yolo-audit ]; then return; fi
  echo "setting up .venv (torch, ultralytics, ray, ...; a few minutes the first time)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first, exactly as pinned: the CPU-only 2.13 wheel lacks a matching torchvision
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 2> >(grep -v "^WARNING: Location" >&2)
  .venv/bin/python -m pip install -q -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
}

# the package's bytecode, as a regular (non-editable) install writes it: with PYTHONDONTWRITEBYTECODE set, every
# command would otherwise compile yolo_audit's modules from source (~50 ms); up-to-date files are skipped
compile_bytecode() {
  .venv/bin/python -m compileall -q yolo_audit >/dev/null || true
}

case "${1:-}" in
  demo)
    ensure_venv
    compile_bytecode
    shift
    exec .venv/bin/yolo-audit demo "$@"
    ;;
  test)
    ensure_venv
    compile_bytecode
    shift
    # the report test opens the HTML in a real headless browser: Debian's chromium
    if ! command -v chromium >/dev/null 2>&1; then
      echo "installing chromium (Debian package) for the report test" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null ||
        { echo "could not install chromium; the report test will fail" >&2; }
    fi
    .venv/bin/ruff check yolo_audit tests benchmarks
    .venv/bin/ruff format --check yolo_audit tests benchmarks
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash dev.sh demo [--out DIR] | bash dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
