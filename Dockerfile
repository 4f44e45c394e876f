# finetune on one NVIDIA GPU:  docker build -t finetune .  &&  docker run --rm --gpus all finetune doctor
# On a machine without a GPU:   docker run --rm finetune doctor   (the same image, torch runs on the CPU)
# Build and run instructions: docs/docker.md.
#
# Base image: python:slim, not nvidia/cuda:*-cudnn-runtime. PyTorch's CUDA wheels bring their own CUDA
# runtime, cuBLAS and cuDNN (the nvidia-* pip packages) and bitsandbytes ships its own CUDA kernels, so
# the CUDA libraries of an nvidia/cuda image would be a second, unused copy (~3 GB). The one thing the
# container needs from outside is the driver (libcuda.so), which the NVIDIA Container Toolkit mounts
# from the host on `docker run --gpus all`.
#
# torch from the CUDA 12.8 index by default: those wheels run on host drivers >= 525 (CUDA minor
# version compatibility; >= 570 for everything) and have kernels from Turing (T4) to Blackwell. PyPI's
# default torch is a CUDA 13 build that needs a driver >= 580. Another CUDA:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 -t finetune .
# `finetune doctor` in the container checks the driver against the CUDA that torch was built with.
#
# Layers, slowest-changing first, so that a change to the package's code rebuilds only the last ones
# (seconds) and the dependencies (GBs) stay cached:
#   base     Debian + gcc, the users and folders                 changes: never
#   deps     + a venv with torch and the dependencies            changes: with pyproject.toml or a build-arg
#   wheel    the package's own wheel (build stage, not shipped)  changes: with finetune/, README.md, recipes/, data/
#   runtime  deps + recipes, data, entrypoint, the wheel         what `docker run` gets

ARG PYTHON_VERSION=3.12

# ---- base: what the runtime needs besides Python packages ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS base

# gcc: Triton (a torch dependency, used by Unsloth and torch.compile) compiles a small C launcher the
# first time it runs a kernel, and fails without a C compiler. ~200 MB (201 MB measured: gcc-12, binutils,
# libc6-dev and the sanitizer runtimes gcc depends on), next to torch's 0.9 GB (CPU) or 5.6 GB (CUDA 13).
# apt-get clean: python:slim's apt config already drops the downloaded .debs; a base without that config
# would keep 123 MB of them. DL3008 (pin apt versions): Debian's mirrors drop old versions, so a pin
# breaks the build within months.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# NVIDIA_*: what the Container Toolkit exposes (nvidia/cuda images set the same); HF_HOME: the hub
# cache lives on a volume, so models are downloaded once, not on every `docker run`.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The user finetune (uid/gid 1000) runs the commands unless /runs belongs to someone else (see
# docker/entrypoint.py). The hub cache and /workspace are writable by any uid (sticky, like /tmp), so
# `docker run --user UID:GID` and Kubernetes' runAsUser work too.
RUN groupadd --gid 1000 finetune \
    && useradd --create-home --uid 1000 --gid 1000 finetune \
    && mkdir -p /data /runs /recipes /cache/huggingface /workspace \
    && chown 1000:1000 /data /runs /cache/huggingface /workspace \
    && chmod 1777 /cache/huggingface /workspace

# ---- deps: a virtual environment with torch and the package's dependencies, not the package ----
FROM base AS deps

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_SPEC="torch>=2.4"
# Optional extras, e.g. --build-arg EXTRAS=unsloth (a CUDA-only backend that pins older transformers,
# trl and datasets). The default GPU stack (bitsandbytes 4-bit, peft, trl) is in the core dependencies.
ARG EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv

# torch first, from the index of the CUDA build we want; then pin exactly that build, so neither the
# package's dependencies nor an extra can replace it with PyPI's build for another CUDA. DL3013 (pin
# versions): the default takes the newest torch of that index; pin it with --build-arg TORCH_SPEC=torch==X.Y.Z.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
    && python -c "from importlib.metadata import version; print('torch==' + version('torch'))" > /opt/torch.txt

# The dependencies (and those of EXTRAS) as pyproject.toml lists them, without the package's code: pip
# installs an empty package with the same metadata and removes it again, leaving its dependencies. So
# this layer is rebuilt only when pyproject.toml or a build argument changes. setuptools (the build
# backend) goes into the venv too, so the wheel stage builds without the network.
COPY pyproject.toml /tmp/src/
RUN mkdir /tmp/src/finetune \
    && touch /tmp/src/README.md /tmp/src/finetune/__init__.py \
    && pip install --constraint /opt/torch.txt "setuptools>=77" "/tmp/src${EXTRAS:+[$EXTRAS]}" \
    && pip uninstall -y finetune \
    && rm -rf /tmp/src

# ---- wheel: the package itself (this stage is not shipped; only its wheel is) ----
FROM deps AS wheel
COPY pyproject.toml README.md /src/
COPY finetune /src/finetune
# finetune/shipped/recipes and finetune/shipped/data link to ../../recipes and ../../data: with these beside
# it, the wheel carries the shipped recipes and their data (`finetune train quickstart` from any folder).
COPY recipes /src/recipes
COPY data /src/data
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels /src

# ---- runtime ----
FROM deps AS runtime

# The shipped recipes and sample data. Recipes name their data as ../data/..., so /recipes and /data
# side by side keep them working; a named volume on /data starts with these samples, a bind mount
# replaces them.
COPY --chown=1000:1000 recipes /recipes
COPY --chown=1000:1000 data /data
COPY docker/entrypoint.py /usr/local/bin/finetune-entrypoint

# The package, last: a code change rebuilds only this layer and the wheel above (seconds, ~1 MB). The
# wheel carries its own copy of the shipped recipes and data (`finetune recipes`, `finetune train quickstart`).
# /workspace mirrors the repository (recipes/, data/, runs/), so `finetune train recipes/quickstart.yaml`
# works as in the README and its default run directory runs/<recipe> lands on the /runs volume.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps --no-index /tmp/wheels/finetune-*.whl \
    && rm -rf /tmp/wheels \
    && ln -s /recipes /workspace/recipes \
    && ln -s /data /workspace/data \
    && ln -s /runs /workspace/runs

# No USER: the entrypoint starts as root only to read who owns /runs, and runs finetune as that user
# (uid 1000 when /runs is root's), never as root. With --user or Kubernetes' runAsUser it starts as
# that user and runs finetune directly. Details: docs/docker.md, "Who owns the results".
WORKDIR /workspace
VOLUME ["/data", "/runs", "/cache/huggingface"]

ENTRYPOINT ["/opt/venv/bin/python", "/usr/local/bin/finetune-entrypoint"]
CMD ["--help"]
