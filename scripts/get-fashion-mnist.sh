#!/usr/bin/env bash
# Install Fashion-MNIST (Debian package, 31 MB) into /usr/share/datasets/fashion-mnist.
# Elsewhere: download the four IDX .gz files and pass data.path=DIR.
set -euo pipefail
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
