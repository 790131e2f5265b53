# vitaccel: the two commands of the README.
#   make demo   create .venv, install, run the whole flow on the embedded default model
#   make test   create .venv if needed, install, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Extra arguments, e.g. `make demo DEMO_ARGS="--quick"` or `make test PYTEST_ARGS="-k sim"`.
# The demo's engine is 8 x 8 (the CLI default is 16 x 16, whose Verilator build takes ~7 minutes).
DEMO_ARGS   ?= --rows 8 --cols 8
PYTEST_ARGS ?=
JOBS        ?= 2

.PHONY: demo test install clean lint

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vitaccel flow -o demo-out --force $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile -q $(PYTEST_ARGS)

clean:
	rm -rf build demo-out .pytest_cache

lint: $(STAMP)
	$(BIN)/ruff check .
