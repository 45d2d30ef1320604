# Every target that runs the project installs it into .venv first (nothing else is assumed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Two workers: the suite is safe in parallel (own state dir per test, kernel-picked ports).
PYTEST_ARGS ?= -n 2

.DEFAULT_GOAL := help
.PHONY: help demo test bench clean tracefs

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

# editable_mode=compat puts the source dir on sys.path with a .pth line; the default import-hook
# finder costs ~9 ms at every start of the CLI (measured by make bench).
# The environment sets PYTHONDONTWRITEBYTECODE=1, so nothing is cached at run time: bytecode is
# compiled here, at install, or every start of the CLI compiles its modules again (make bench).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -m compileall -q addrinuse
	@touch $(STAMP)

demo: $(STAMP) ## Reproduce "Address already in use" on this machine's kernel
	$(BIN)/addrinuse demo

test: $(STAMP) tracefs ## Run the test suite (real sockets, real processes)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The close-sequence experiment reads the kernel tracepoint sock:inet_sock_set_state; tracefs is
# root-only and not always mounted. Elsewhere those checks report 'skip' with the reason.
tracefs:
	@if [ "$$(id -u)" = 0 ] && [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then \
		mount -t tracefs nodev /sys/kernel/tracing || echo "note: tracefs not mounted: tracepoint checks will skip"; fi

clean: ## Remove .venv and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info
	find addrinuse tests bench -name __pycache__ -prune -exec rm -rf {} +

bench: $(STAMP) tracefs ## Benchmark against ss, psutil, /proc and import click at 1k-200k entries
	$(BIN)/python -m compileall -q addrinuse
	$(BIN)/python -m bench
