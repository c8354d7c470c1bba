PYTHON ?= python3

.PHONY: deps demo test lint unit bench soak rpm

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
