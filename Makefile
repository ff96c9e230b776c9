# Benchmarks (root; a two-node lab is brought up and taken down by the run itself).
#   make bench        the full run, about 15 minutes; results to bench/results/
#   make bench-smoke  seconds of tiny rates: checks the harness; results to $(SMOKE_OUT)

PYTHON ?= .venv/bin/python
SMOKE_OUT ?= /tmp/nodemesh-bench-smoke

.PHONY: bench bench-smoke bootstrap

# Installs what is missing (apt packages, .venv, the project); quick when all is there.
bootstrap:
	./scripts/bootstrap

bench: bootstrap
	$(PYTHON) -m bench.meshbench --out bench/results

bench-smoke: bootstrap
	$(PYTHON) -m bench.meshbench --smoke --out $(SMOKE_OUT)
