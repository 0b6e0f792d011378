# The two commands first: `make run` (dev mode, nothing else to install) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test services lint schema clean help bench

help:
	@echo "make run      start the gateway in dev mode (embedded PostgreSQL, sandbox adapters)"
	@echo "make test     make sure PostgreSQL and RabbitMQ run, run the whole suite, then the"
	@echo "              AMQP end-to-end tests once more against quorum queues"
	@echo "make schema   regenerate schema/send-job.v1.json from the job model"
	@echo "make bench    benchmark against real PostgreSQL and RabbitMQ (MODE=throughput|latency|inflight|all,"
	@echo "              N=jobs, WORKERS=processes, BENCH_ARGS=...; see bench/README.md)"
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

# The AMQP end-to-end tests, run a second time against quorum queues (own session, own vhost).
QUORUM_TESTS := tests/test_email_flow.py tests/test_shutdown.py tests/test_scheduler.py \
	tests/test_policy_flow.py tests/test_workers.py tests/test_queue_type.py

test: $(STAMP) services
	$(BIN)/python -m pytest
	TEST_AMQP_QUEUE_TYPE=quorum $(BIN)/python -m pytest $(QUORUM_TESTS)

# The benchmark: own database and vhost, fake providers, N gateway processes (bench/README.md).
# MODE=throughput (default, ~2 min), latency, inflight, or all (~3.5-4.5 min).
MODE ?= throughput
N ?= 50000
WORKERS ?= 1
BENCH_ARGS ?=

bench: $(STAMP) services
	$(BIN)/python -m bench --mode $(MODE) --jobs $(N) --workers $(WORKERS) $(BENCH_ARGS)

schema: $(STAMP)
	$(BIN)/gateway schema > schema/send-job.v1.json

clean:
	rm -rf $(VENV) .gateway-dev

# Not part of `make test`: a steady load for SOAK_SECONDS (default 600) on one gateway process,
# with RSS and open connections reported every 30 s and a verdict at the end (bench/soak.py).
.PHONY: soak
soak: $(STAMP) services
	$(BIN)/python -m bench.soak
