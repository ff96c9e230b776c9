# The dashboard image: nodemesh-dashboard (FastAPI, offline assets), a client of the public API.
#
# Build from the repository root:
#   docker build -f images/dashboard.Dockerfile -t ghcr.io/nodemesh/dashboard:0.1.0 .
FROM python:3.11-slim AS build
# Every dependency is a binary wheel for CPython 3.11 on x86_64 Linux: no compiler needed.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nodemesh ./nodemesh
COPY nodeagent ./nodeagent
COPY controlplane ./controlplane
COPY dashboard ./dashboard
COPY ingress ./ingress
COPY cni-plugin ./cni-plugin
COPY examples ./examples
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels nodemesh && rm -rf /wheels
USER 2103:2103
EXPOSE 8084
CMD ["nodemesh-dashboard"]
