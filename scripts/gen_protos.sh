#!/usr/bin/env bash
# Regenerates the Python code for every proto under protos/ into gen/ (committed).
# With --check, regenerates into a temporary folder and fails on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=gen
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mapfile -t files < <(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
rm -rf "$out/pbxmesh"
PATH="$(dirname "$PY"):$PATH" "$PY" -m grpc_tools.protoc -I protos \
  --python_out="$out" --mypy_out="$out" --grpc_python_out="$out" --mypy_grpc_out="$out" \
  "${files[@]}"
# Every folder of generated code is a regular package, so that mypy and setuptools find it.
find "$out/pbxmesh" -type d -exec touch {}/__init__.py \;
if [ "${1:-}" = "--check" ]; then
  if ! diff -r gen/pbxmesh "$out/pbxmesh"; then
    echo "generated code is stale: run scripts/gen_protos.sh and commit gen/" >&2
    exit 1
  fi
  echo "generated code is up to date"
fi
