#!/usr/bin/env bash
# Inseq's own environment for `make bench` (.bench-venv/, git-ignored), kept apart from the project's.
# torch comes first, pinned to the CPU wheel the project uses: inseq's requirements would otherwise pull a
# multi-GB CUDA build. The versions below are the ones the published benchmarks were measured with; they
# resolve together (inseq 0.7.1 runs on transformers 5). For `make bench-gpu`, give a CUDA wheel index, e.g.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash benchmarks/setup_inseq.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.bench-venv
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
# scikit-learn: Inseq's LIME needs it and does not declare it; datasets: `inseq attribute-dataset` (the dataset
# row) reads its rows with it and does not declare it either.
"$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" "inseq==0.7.1" "transformers==5.23.0" "captum==0.9.0" \
    "scikit-learn==1.9.1" "datasets==5.2.0"
"$VENV/bin/python" -c "import importlib.metadata as m; print('inseq env:', *(p + ' ' + m.version(p) for p in ('inseq', 'torch', 'transformers', 'captum', 'datasets')))"
