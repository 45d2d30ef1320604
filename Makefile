# Every target that runs the project installs what it needs first (nothing else is assumed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Four workers on two cores: much of the suite waits on real kernel timers, not the CPU (measured
# without the two 60 s tests: 55 s with -n 2, 41 s with -n 4). The suite is safe in parallel:
# kernel-picked ports, everything matched by 4-tuple. The two real 60 s TIME_WAITs start with the
# session, before any worker exists (tests/_headstart.py), so the total is about one of them.
PYTEST_ARGS ?= -n 4
# Debian packages the lab and the report test use, as command -> package. Installed only as root and
# only where missing; elsewhere those tests skip with the reason.
SYSTEM_TOOLS := nft:nftables ip:iproute2 ss:iproute2 tc:iproute2 chromium-headless-shell:chromium-headless-shell

.DEFAULT_GOAL := help
.PHONY: help demo test bench clean tracefs system-deps

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# editable_mode=compat puts the source dir on sys.path with a .pth line; the default import-hook
# finder costs ~9 ms at every start of the CLI. The environment may set PYTHONDONTWRITEBYTECODE=1,
# so nothing is cached at run time: bytecode is compiled here, at install (make bench measures it).
$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -m compileall -q addrinuse
	@touch $(STAMP)

demo: $(STAMP) ## Reproduce "Address already in use" on this machine's kernel
	$(BIN)/addrinuse demo

test: $(STAMP) tracefs system-deps ## Run the test suite (real sockets, processes, namespaces)
	$(BIN)/python -m compileall -q addrinuse
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) tracefs system-deps ## Benchmark against ss, psutil, /proc and import click, 1k-200k entries
	$(BIN)/python -m compileall -q addrinuse
	$(BIN)/python -m bench

# The tracepoint experiments read sock:inet_sock_set_state; tracefs is root-only and not always
# mounted. Elsewhere those checks report 'skip' with the reason.
tracefs:
	@if [ "$$(id -u)" = 0 ] && [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then \
		mount -t tracefs nodev /sys/kernel/tracing || echo "note: tracefs not mounted: tracepoint checks will skip"; fi

# nft and ip for the network-namespace lab, chromium-headless-shell to render report.html
# (86 MB download). One apt-get for whatever is missing; a refresh of the package lists only if
# the first attempt fails. Never fatal: a missing tool makes its tests skip with the reason.
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1; } || \
			echo "note: could not install$$missing: the tests that need them will skip"; \
		else echo "note: missing$$missing (install as root): the tests that need them will skip"; fi; fi

clean: ## Remove .venv and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info
	find addrinuse tests bench -name __pycache__ -prune -exec rm -rf {} +
