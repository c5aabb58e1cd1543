SHELL := /bin/bash
# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

tracker.toml:
	cp tracker.toml.example tracker.toml

run: $(STAMP) tracker.toml
	mkdir -p var
	$(BIN)/trackermail --config tracker.toml migrate
	$(BIN)/twistd -n --pidfile= tracker --config tracker.toml

# Prints a last line "N passed, M failed" (the plain form CI reads).
test: $(STAMP)
	@$(BIN)/python -m twisted.trial --reporter=text $(TRIAL_ARGS) tests 2>&1 | tee .trial.log; \
	status=$${PIPESTATUS[0]}; \
	$(BIN)/python .ci/summarize.py .trial.log; \
	exit $$status

bench: $(STAMP)
	mkdir -p bench/results
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) _trial_temp .trial.log *.egg-info
