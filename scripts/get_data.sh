#!/usr/bin/env bash
# Make Fashion-MNIST available: Debian's dataset-fashion-mnist package where apt is available.
# Elsewhere, run lcompress with data.download=true (needs internet) or copy the IDX files into
# ${LC_DATA_DIR:-~/.cache/lightning_compress/data}/FashionMNIST/raw/.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST: found Debian's copy in $DIR"; exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
else
  echo "Fashion-MNIST: apt-get not available; pass data.download=true to lcompress (needs internet)." >&2
fi
