# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job on the embedded defaults: a SQLite file and the outbox folder, no SMTP server.
# Running it again sends nothing twice: `send --latest` composes an issue only from essays no
# issue has carried yet, and an issue already sent is not sent again.
demo: $(STAMP)
	$(BIN)/newsletter essays import examples/essays
	$(BIN)/newsletter essays list
	$(BIN)/newsletter subscribers import examples/subscribers.csv
	$(BIN)/newsletter send --latest --yes
	@echo "Each subscriber's message is one .eml file in ./outbox (open one in a mail client)."

test: $(STAMP)
	$(BIN)/ruff check pipeline subscribers tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 3

bench: $(STAMP)
	$(BIN)/python -m pytest tests/benchmarks -s -p no:cacheprovider

clean:
	rm -rf $(VENV) newsletter.db newsletter.db-wal newsletter.db-shm outbox
