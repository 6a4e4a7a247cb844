# The one image for every place rollout runs in a cluster: the CLI, the Job (manifests/job.yaml), the watch
# (manifests/watch.yaml) and the load pods. Multi-stage: the build stage makes a virtualenv, the final stage
# copies only that onto a slim Python; it runs as a non-root user and writes nothing outside /tmp, so the
# pods run it with readOnlyRootFilesystem and an emptyDir on /tmp.
#
#   docker build -t registry.example.com/rollout:0.1 .        (or: podman build / buildah bud / kaniko)
#   docker run --rm registry.example.com/rollout:0.1 --help

ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rollout ./rollout
RUN python -m venv /opt/rollout \
 && /opt/rollout/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/rollout/bin/pip install --no-cache-dir . \
 && /opt/rollout/bin/rollout --help >/dev/null

FROM python:${PYTHON}-slim
COPY --from=build /opt/rollout /opt/rollout
ENV PATH=/opt/rollout/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["rollout"]
CMD ["--help"]
