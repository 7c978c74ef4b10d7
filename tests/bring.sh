#!/usr/bin/env bash
# What the tests need beyond Deno, brought when it is missing: Debian's chromium (the run's page, tests/view_test.ts),
# python3-torch and python3-torchvision (torch/train_ddp.py, tests/ddp_test.ts), OpenBLAS (tests/native_test.ts).
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
/usr/bin/python3 -I -c "import torch, torchvision" 2>/dev/null || need+=(python3-torch python3-torchvision)
# OpenBLAS: our native products (kernels/native.ts), and PyTorch's yardstick on it rather than the reference BLAS
ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 || need+=(libopenblas0-pthread)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "the tests need Debian's ${need[*]}: installing (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "error: the tests need Debian's ${need[*]}: apt-get install -y ${need[*]} (as root)" >&2
  exit 1
fi
