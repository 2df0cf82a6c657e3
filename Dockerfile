# One image for every service of a server: `pbxmesh serve registry|callstate|sipgw -c FILE`.
# Build: docker build -t pbxmesh:0.1.0 .   (BASE: any Debian bookworm image with Python 3.11 as
# `python` on the PATH, for builds that cannot pull from Docker Hub.)
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
# Unset unless given: for builds whose way to PyPI needs its own index or certificate authority.
ARG PIP_INDEX_URL
ARG PIP_CERT
WORKDIR /src
RUN python -m venv /opt/pbxmesh
COPY requirements.txt ./
RUN /opt/pbxmesh/bin/pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml README.md ./
COPY services ./services
COPY gen ./gen
RUN /opt/pbxmesh/bin/pip install --no-cache-dir --no-deps . \
 && /opt/pbxmesh/bin/python -m compileall -q /opt/pbxmesh

FROM ${BASE}
# A fixed non-root user: the manifests run it with runAsNonRoot and a read-only root filesystem.
RUN groupadd --gid 10001 pbxmesh \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pbxmesh
COPY --from=build /opt/pbxmesh /opt/pbxmesh
ENV PATH=/opt/pbxmesh/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
# SIP (UDP and TCP), trunk (UDP), and the gRPC APIs: registry, sipgw, callstate.
EXPOSE 5060/udp 5060/tcp 5070/udp 50051 50061 50071
ENTRYPOINT ["pbxmesh"]
CMD ["--help"]
