# pbxmesh: `make up` runs a local group of three servers; `make test` installs what the tests
# need and runs them. Both start from a clean clone with Python 3.11, make and the registries.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TOOLS  := .tools
BUF_VERSION := 1.75.0
BUF    := $(TOOLS)/node_modules/@bufbuild/buf-linux-x64/bin/buf
STAMP  := $(VENV)/.installed

.PHONY: up test check lint typecheck protos proto-check buf-check pytest bench soak clean sip-peers media-peers demo image image-check

# The media relay's data path is C (services/media/_relay.c) with libsrtp, built by the install:
# it needs gcc, Python's headers and libsrtp's (Debian: gcc libc6-dev libsrtp2-dev, and
# python3.11-dev for Debian's own Python; installed here when run as root).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml services/media/_relay.c
	@headers=$$($(PYTHON) -c "import sysconfig, os; print(os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"); \
	if ! command -v gcc >/dev/null || [ "$$headers" != True ] || [ ! -f /usr/include/srtp2/srtp.h ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev libsrtp2-dev; \
			[ "$$headers" = True ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3.11-dev; \
		else echo "missing: gcc, Python's and libsrtp's headers (Debian: gcc libc6-dev libsrtp2-dev python3.11-dev), to build the media relay"; exit 1; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)
	test -x $(BUF)

up: $(STAMP)
	$(BIN)/python scripts/local_group.py examples/alpha.yaml examples/beta.yaml examples/gamma.yaml

image:
	docker build -t pbxmesh:0.1.0 .

# The same build without a container daemon or Docker Hub (podman, debootstrap; as root).
image-check:
	scripts/image_check.sh

demo: $(STAMP) sip-peers
	$(BIN)/python scripts/demo.py

protos: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_protos.sh

proto-check: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_protos.sh --check

buf-check: $(BUF)
	$(BUF) lint
	$(BUF) format -d --exit-code
	@if git rev-parse -q --verify main >/dev/null && git ls-tree -r --name-only main -- protos | grep -q '\.proto$$'; then \
		$(BUF) breaking --against '.git#branch=main' && echo "buf breaking: no breaking change against main"; \
	else echo "buf breaking: main has no protos yet"; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Real SIP peers for the gateway's tests, from Debian: SIPp (package sip-tester), sipsak, the
# baresip softphone, sipvicious (svcrack, the password cracker the lockout is tested with) and
# Kamailio (a telephone provider's edge for the trunk tests; it sits in /usr/sbin, and the tests
# run their own on loopback ports, never the system service); gcc builds the media bench's load
# generator, which a test runs.
sip-peers:
	@missing=""; for t in sipp sipsak baresip svcrack kamailio gcc; do command -v $$t >/dev/null || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends sip-tester sipsak baresip sipvicious kamailio gcc libc6-dev; \
		else echo "missing:$$missing: install the Debian packages sip-tester, sipsak, baresip, sipvicious, kamailio and gcc (or run make as root)"; exit 1; fi; \
	fi

# The media bench's reference relay (rtpengine, userspace) and the compiler of its load generator.
media-peers:
	@missing=""; for t in rtpengine gcc; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rtpengine-daemon gcc libc6-dev; \
		else echo "missing:$$missing: install the Debian packages rtpengine-daemon and gcc (or run make as root)"; exit 1; fi; \
	fi

# Test files run side by side: most of a test's time is waiting on real processes and timers.
TEST_WORKERS ?= 3
pytest: $(STAMP) sip-peers
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15

check: proto-check buf-check lint typecheck

test: check pytest

bench: $(STAMP) sip-peers media-peers
	$(BIN)/python bench/registry_bench.py
	$(BIN)/python bench/sipgw_bench.py
	$(BIN)/python bench/callstate_bench.py
	$(BIN)/python bench/lockout_bench.py
	$(BIN)/python bench/flood_bench.py
	$(BIN)/python bench/watchers_bench.py
	$(BIN)/python bench/media_bench.py
	$(BIN)/python bench/srtp_bench.py

# Ten minutes of steady local calls through one gateway: its memory every 30 s.
soak: $(STAMP) sip-peers
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
