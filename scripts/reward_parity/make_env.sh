#!/usr/bin/env bash
# The original reward packages' environment, for `make reward-parity` (never the project's):
# hpsv2 1.2.0 (with its bundled open_clip), image-reward 1.5 under transformers 4.36.2,
# timm 0.6.13 and fairscale 0.4.13, OpenAI clip; the same torch, torchvision and Pillow as
# the project, so that only the scoring code differs.
# Usage: make_env.sh VENV_DIR
set -euo pipefail
venv=${1:?usage: make_env.sh VENV_DIR}
here=$(cd "$(dirname "$0")" && pwd)
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" -c "$here/requirements.txt" torch torchvision
"${pip[@]}" -r "$here/requirements.txt"
# fairscale and clip ship as source only; they build against the torch installed above.
"${pip[@]}" --no-build-isolation fairscale==0.4.13 openai-clip==1.0.1
# hpsv2 pins pytest==7.2.0 and protobuf<4 and image-reward pins diffusers, datasets and
# accelerate for training; scoring needs none of them.
"${pip[@]}" --no-deps hpsv2==1.2.0 image-reward==1.5
# The hpsv2 wheel lacks open_clip's BPE vocabulary; OpenAI clip ships the same file.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$site/clip/bpe_simple_vocab_16e6.txt.gz" "$site/hpsv2/src/open_clip/"
