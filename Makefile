PYTHON ?= python3

.PHONY: deps demo test lint unit bench soak rpm chaos chaos-short reliability-table bench-fleet

deps:
	bash scripts/install-deps.sh

# Start a private broker, the agent, submit a sample run, print what came back.
# BROKER=activemq (ActiveMQ Classic from Debian, the default) or BROKER=artemis.
BROKER ?= activemq
demo: deps
	$(PYTHON) -m postprocessing.devtools.demo --broker $(BROKER)

lint:
	$(PYTHON) -m ruff check postprocessing tests bench
	$(PYTHON) -m mypy

# Everything: lint, type checks, unit and end-to-end tests against a real broker.
test: deps lint
	$(PYTHON) -m pytest

bench: deps
	$(PYTHON) bench/bench_agent.py

# The long fault harness, per broker (needs root): CHAOS_MINUTES of faults and load, printed seed
# (CHAOS_SEED replays one), figures recorded in build/reliability; then `make reliability-table`.
CHAOS_MINUTES ?= 20
CHAOS_BROKERS ?= activemq artemis rabbitmq
CHAOS_ARGS ?=
chaos: deps
	for b in $(CHAOS_BROKERS); do \
		$(PYTHON) bench/chaos.py --broker $$b --minutes $(CHAOS_MINUTES) --record \
			$(if $(CHAOS_SEED),--seed $(CHAOS_SEED)) $(CHAOS_ARGS) || status=1; \
	done; exit $${status:-0}

# The short fault harness alone (~2.5 min per broker; needs root); `make test` runs it too.
chaos-short: deps
	$(PYTHON) -m pytest -m chaos tests/test_fire_chaos.py

# Merge the figures the last test runs measured (build/reliability/*.json) into
# docs/reliability.json and re-render the README's Reliability table.  Tests never write tracked files.
reliability-table:
	$(PYTHON) -m tests.support.reliability

# 1, 2 and 4 agents at max_procs 4 on one broker, 2,000 no-op runs each: throughput against the
# fleet's spawn ceiling, each agent's share, the broker's CPU, and no agent above its slots.
bench-fleet: deps
	$(PYTHON) bench/bench_fleet.py --runs 2000 --fleets 1,2,4

# The full soak: 2,000 no-op runs at max_procs 4 (make test runs a short one; SOAK_RUNS sets its size).
soak: deps
	$(PYTHON) bench/soak.py --runs 2000

# A noarch RPM from the sdist: rpm/BUILD/RPMS/noarch/.  RPM_USER is the service account.
RPM_TOPDIR ?= $(CURDIR)/rpm/BUILD
RPM_USER ?= autoreduce
DIST ?= $(CURDIR)/dist
rpm:
	$(eval VERSION := $(shell $(PYTHON) -c "import postprocessing; print(postprocessing.__version__)"))
	rm -f $(DIST)/postprocessing-$(VERSION).tar.gz
	$(PYTHON) -c "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])" $(DIST)
	mkdir -p $(RPM_TOPDIR)/SOURCES
	cp $(DIST)/postprocessing-$(VERSION).tar.gz $(RPM_TOPDIR)/SOURCES/
	rpmbuild -bb --define "_topdir $(RPM_TOPDIR)" --define "pp_version $(VERSION)" \
		--define "pp_user $(RPM_USER)" rpm/postprocessing.spec
