# One image for every service of a server: `pbxmesh serve registry|callstate|sipgw|media -c FILE`.
# Build: docker build -t pbxmesh:0.1.0 .   (BASE: any Debian bookworm image with Python 3.11 as
# `python` on the PATH, for builds that cannot pull from Docker Hub.)
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
# Unset unless given: for builds whose way to PyPI needs its own index or certificate authority.
ARG PIP_INDEX_URL
ARG PIP_CERT
WORKDIR /src
# The media relay's data path is C (services/media/_relay.c) with libsrtp: a compiler, Python's
# and libsrtp's headers for the build stage only (the official images have Python's headers;
# Debian's python3.11 has them in -dev).
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev libsrtp2-dev \
 && (python -c "import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))" \
     || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3.11-dev) \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/pbxmesh
COPY requirements.txt ./
RUN /opt/pbxmesh/bin/pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml README.md ./
COPY services ./services
COPY gen ./gen
RUN /opt/pbxmesh/bin/pip install --no-cache-dir --no-deps . \
 && /opt/pbxmesh/bin/python -m compileall -q /opt/pbxmesh

FROM ${BASE}
# libsrtp for the media relay (SRTP between servers), the one library it links beside Python's.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libsrtp2-1 \
 && rm -rf /var/lib/apt/lists/*
# A fixed non-root user: the manifests run it with runAsNonRoot and a read-only root filesystem.
RUN groupadd --gid 10001 pbxmesh \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pbxmesh
COPY --from=build /opt/pbxmesh /opt/pbxmesh
ENV PATH=/opt/pbxmesh/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
# SIP (UDP and TCP), trunk (UDP), the gRPC APIs (registry, sipgw, callstate, media) and RTP (the
# media service's default media.rtp_ports; Kubernetes runs it on the host's network).
EXPOSE 5060/udp 5060/tcp 5070/udp 50051 50061 50071 50081 40000-40999/udp
ENTRYPOINT ["pbxmesh"]
CMD ["--help"]
