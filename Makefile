# msad_tf: two commands for a new machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install benchmark reproduce clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
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
# and the leads (mse, fgfi, podnet) on 3 seeds: 45 runs (42 trained), about 1 h 50 min on 2 cores;
# resumable; runs/reproduce_demo, kept in docs/results/reproduce_demo_runs (docs/RESULTS.md, session 14)
reproduce: $(STAMP)
	$(BIN)/msad reproduce --config configs/demo.yaml --tables 1 2 2c 3a 4 controls

clean:
	rm -rf runs predictions build *.egg-info
