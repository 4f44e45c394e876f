# syntax=docker/dockerfile:1
# finetune on one NVIDIA GPU:  docker build -t finetune .  &&  docker run --gpus all finetune doctor
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

ARG PYTHON_VERSION=3.12

# ---- builder: a virtual environment with torch and the package, copied whole into the runtime ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_SPEC="torch>=2.4"
# Optional extras, e.g. --build-arg EXTRAS=unsloth (a CUDA-only backend that pins older transformers,
# trl and datasets). The default GPU stack (bitsandbytes 4-bit, peft, trl) is in the core dependencies.
ARG EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the index of the CUDA build we want; then pin exactly that build, so neither the
# package's dependencies nor an extra can replace it with PyPI's build for another CUDA. DL3013 (pin
# versions): the default takes the newest torch of that index; pin it with --build-arg TORCH_SPEC=torch==X.Y.Z.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
    && python -c "from importlib.metadata import version; print('torch==' + version('torch'))" > /tmp/torch.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY finetune ./finetune
RUN pip install --constraint /tmp/torch.txt "/src${EXTRAS:+[$EXTRAS]}"

# ---- runtime ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG PYTHON_VERSION

# gcc: Triton (a torch dependency, used by Unsloth and torch.compile) compiles a small C launcher the
# first time it runs a kernel, and fails without a C compiler. ~150 MB next to torch's ~5 GB. DL3008 (pin
# apt versions): Debian's mirrors drop old versions, so a pin breaks the build within months.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# NVIDIA_*: what the Container Toolkit exposes (nvidia/cuda images set the same); HF_HOME: the hub
# cache lives on a volume, so models are downloaded once, not on every `docker run`.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A numeric USER below, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --gid 1000 finetune \
    && useradd --create-home --uid 1000 --gid 1000 finetune \
    && mkdir -p /data /runs /recipes /cache/huggingface /workspace \
    && chown 1000:1000 /data /runs /cache/huggingface /workspace

COPY --from=builder /opt/venv /opt/venv
# The shipped recipes and sample data. Recipes name their data as ../data/..., so /recipes and /data
# side by side keep them working; a named volume on /data starts with these samples, a bind mount
# replaces them.
COPY --chown=1000:1000 recipes /recipes
COPY --chown=1000:1000 data /data

# The wheel carries no recipes/: link them where `finetune recipes` looks. /workspace mirrors the
# repository (recipes/, data/, runs/), so `finetune train recipes/quickstart.yaml` works as in the
# README and its default run directory runs/<recipe> lands on the /runs volume.
RUN ln -s /recipes "/opt/venv/lib/python${PYTHON_VERSION}/site-packages/finetune/recipes" \
    && ln -s /recipes /workspace/recipes \
    && ln -s /data /workspace/data \
    && ln -s /runs /workspace/runs

USER 1000:1000
WORKDIR /workspace
VOLUME ["/data", "/runs", "/cache/huggingface"]

ENTRYPOINT ["finetune"]
CMD ["--help"]
