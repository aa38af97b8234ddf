# msad_tf: two commands for a new machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install benchmark reproduce clean

# pip -qq: errors only (no warnings about this machine's package index, no setuptools notices)
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/msad demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=15

benchmark: $(STAMP)
	$(BIN)/msad benchmark train

# the paper's Tables 1, 2a-c, 3a, 4 and the two controls at the demo's model and budgets, 3 seeds
# and the leads (mse, fgfi, podnet) on 3 seeds: 45 runs (42 trained), about 2 h on 2 cores by the run
# times of sessions 14 and 15 (not timed in one go); resumable; runs/reproduce_demo, kept in
# docs/results/reproduce_demo_runs (docs/RESULTS.md, session 15)
reproduce: $(STAMP)
	$(BIN)/msad reproduce --config configs/demo.yaml --tables 1 2 2c 3a 4 controls

clean:
	rm -rf runs predictions build *.egg-info
