# The two commands first: `make run` (dev mode, nothing else to install) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test services lint schema clean help

help:
	@echo "make run      start the gateway in dev mode (embedded PostgreSQL, sandbox adapters)"
	@echo "make test     make sure PostgreSQL and RabbitMQ run, then run the whole suite"
	@echo "make schema   regenerate schema/send-job.v1.json from the job model"
	@echo "make clean    remove the virtualenv and dev data"

$(STAMP): pyproject.toml
	bash .ci/ensure-venv $(PYTHON) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gateway dev

services:
	bash .ci/ensure-services

test: $(STAMP) services
	$(BIN)/python -m pytest

schema: $(STAMP)
	$(BIN)/gateway schema > schema/send-job.v1.json

clean:
	rm -rf $(VENV) .gateway-dev
