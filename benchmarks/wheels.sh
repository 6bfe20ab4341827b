#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh installs on the GPU machine, which has no package registry
# (benchmarks/README.md): what gradlab needs that the machine's image lacks, at the versions
# installed in this environment, for CPython 3.12 on x86-64 Linux, into benchmarks/wheels/
# (git-ignored). Run it here, with the project's environment active:
#
#     bash benchmarks/wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=benchmarks/wheels
# what gradlab imports (and the launchers its tests use) that the image does not hold
NEED="hydra-core omegaconf antlr4-python3-runtime wandb hydra-joblib-launcher hydra-submitit-launcher submitit setuptools"
# the image's Python packages (the device tool's KINDS.md, read 2026-11-17): never carried
PRESENT=" absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cycler cython filelock flatbuffers fonttools
frozenlist fsspec grpcio h11 h5py httpcore httpx huggingface-hub idna imageio iniconfig jinja2 joblib kiwisolver
lightning lightning-utilities markdown markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath msgpack multidict
networkx ninja numpy packaging pandas pillow pip pluggy protobuf psutil pyarrow pygments pyparsing pytest pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich safetensors scikit-learn scipy shellingham six sympy
tensorboard threadpoolctl tokenizers torch torchvision tqdm transformers triton typer typing-extensions urllib3 wheel
xxhash yarl zipp "
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
PLATFORMS="$PLATFORMS --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64"
TARGET="--python-version 3.12 --implementation cp $PLATFORMS --only-binary=:all:"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip freeze --exclude-editable > "$tmp/versions.txt"  # the versions tested here
# antlr4-python3-runtime ships only a source archive: built here (pure Python)
pip wheel -q --no-deps -w "$tmp/local" -c "$tmp/versions.txt" antlr4-python3-runtime
pip install -q --dry-run --ignore-installed --target "$tmp/resolved" --report "$tmp/report.json" $TARGET \
    --find-links "$tmp/local" -c "$tmp/versions.txt" $NEED
rm -rf "$DIR" && mkdir -p "$DIR"
python - "$tmp/report.json" "$PRESENT" > "$tmp/carry.txt" <<'PY'
import json, re, sys
report, present = json.load(open(sys.argv[1])), set(sys.argv[2].split())
for item in report["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name not in present:
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
PY
pip download -q --no-deps $TARGET --find-links "$tmp/local" -d "$DIR" -r "$tmp/carry.txt"
cp "$tmp"/local/*.whl "$DIR"
ls "$DIR"
du -sh "$DIR"
