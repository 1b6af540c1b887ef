# The two commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv and install the project into it when needed (idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: demo test test-fast install lint clean

$(STAMP): pyproject.toml
	@bash scripts/space.sh $(VENV) 2 "installing the project into $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,lab]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@bash scripts/demo.sh $(OUT)

test: $(STAMP)
	@bash scripts/test.sh

# the inner loop: lint, then every test that starts no process (about a minute)
test-fast: $(STAMP)
	@bash scripts/test.sh -m "not slow"

# ruff, the import contracts (the library knows no lab) and mypy on dr_kit
lint: $(STAMP)
	@$(BIN)/ruff check dr_kit tests
	@$(BIN)/lint-imports --no-cache
	@$(BIN)/mypy dr_kit

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
