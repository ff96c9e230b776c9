# The node agent image: nodemesh-agent, plus install-cni and the self-contained nodemesh-cni
# plugin it copies to the node. One image, two containers of the DaemonSet.
#
# Build from the repository root:
#   docker build -f images/agent.Dockerfile -t ghcr.io/nodemesh/agent:0.1.0 .
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
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && sh cni-plugin/build.sh /out/nodemesh-cni

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
# The agent installs redirect rules in pod namespaces with the legacy iptables tables (the ones
# nodemesh's rules and tests read back with iptables-legacy-save), and enters them with nsenter.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels nodemesh && rm -rf /wheels \
 && python3 -OO -m compileall -q -j 0 "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
    "$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
# The DaemonSet runs the agent with PYTHONOPTIMIZE=2 (docstrings dropped: less memory) on a
# read-only root: its .opt-2.pyc files must be in the image, or each start compiles every module.
COPY --from=build /out/nodemesh-cni /opt/nodemesh/nodemesh-cni
RUN nodemesh-agent --help >/dev/null && python3 -m nodemesh_cni.install --help >/dev/null \
    && python3 -m nodeagent.handover.park --help >/dev/null
EXPOSE 4191
ENTRYPOINT []
CMD ["nodemesh-agent", "--help"]
