#!/usr/bin/env bash
# NNCodec 2.1.3 (Fraunhofer's implementation of the MPEG NNC standard, DeepCABAC), for the peer rows of
# bench.rate_fmnist only: never a dependency of the library. It pins numpy<2 and pulls OpenCV, so it is built into a
# folder of its own (a C++ compiler is needed; pybind11 comes from a throwaway venv) and found through PYTHONPATH:
#   bash scripts/install_nncodec.sh && PYTHONPATH=.peers python -m bench.rate_fmnist
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${NNCODEC_TARGET:-$ROOT/.peers}"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
python3 -m venv "$BUILD/venv"
"$BUILD/venv/bin/pip" install -q pybind11 setuptools wheel numpy
"$BUILD/venv/bin/pip" install -q --no-deps --no-build-isolation --target "$TARGET" nncodec==2.1.3
# its imports that the project's environment lacks (numpy, torch and the rest come from the project's environment)
"$BUILD/venv/bin/pip" install -q --no-deps --target "$TARGET" pandas pytz scikit-learn joblib threadpoolctl narwhals \
  h5py opencv-python-headless
echo "NNCodec is in $TARGET: run the benchmark with PYTHONPATH=$TARGET"
