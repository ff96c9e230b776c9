# Benchmarks (root; a two-node lab is brought up and taken down by the run itself).
#   make bench        the full run, <= 10 minutes; results to bench/results/
#   make bench-smoke  seconds of tiny rates: checks the harness; results to $(SMOKE_OUT)

PYTHON ?= .venv/bin/python
SMOKE_OUT ?= /tmp/nodemesh-bench-smoke

.PHONY: bench bench-smoke

bench:
	$(PYTHON) -m bench.meshbench --out bench/results

bench-smoke:
	$(PYTHON) -m bench.meshbench --smoke --out $(SMOKE_OUT)
