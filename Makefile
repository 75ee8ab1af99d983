# triage: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test install install-test schemas clean help kafka-up kafka-down bench bench-quick train

help:
	@echo "make demo   - create .venv, install, run 'triage demo' (writes demo-out/)"
	@echo "make test   - install the test extras and run the whole test suite"
	@echo "make kafka-up / kafka-down - start / stop a local Apache Kafka broker (KRaft)"
	@echo "make bench / bench-quick   - benchmarks against pydicom, SimpleITK, MONAI (writes benchmarks/results/)"
	@echo "make train MODEL=ich|lvo   - phantoms -> train -> evaluate -> export -> register into models/"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e . pydicom-data
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo scores real DICOM from pydicom's packages plus phantom head CTs and CTAs
# (with and without haemorrhage / occlusion), generated here with fixed seeds.
DEMO_PHANTOMS := demo-out/phantoms
demo: install
	$(PY) -m pipelines.synth --kind head_ct --n 4 --seed 9001 --out $(DEMO_PHANTOMS)/head_ct
	$(PY) -m pipelines.synth --kind head_cta --n 4 --seed 9002 --out $(DEMO_PHANTOMS)/head_cta
	$(VENV)/bin/triage demo --out demo-out --studies $(DEMO_PHANTOMS)/head_ct/studies --studies $(DEMO_PHANTOMS)/head_cta/studies

test: install-test
	$(PY) -m pytest -q -ra; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# A single-node Apache Kafka (KRaft) on 127.0.0.1:$${KAFKA_PORT:-9092}, data under .kafka/
kafka-up:
	scripts/kafka/broker.sh up $${KAFKA_PORT:-9092} .kafka

kafka-down:
	scripts/kafka/broker.sh down .kafka

# Benchmarks: ratios against peers measured in the same run (see BENCHMARKS.md)
bench: install-test
	$(PY) -m benchmarks.run

bench-quick: install-test
	$(PY) -m benchmarks.run --quick

# Model lifecycle: regenerate phantoms, train, evaluate, export, check parity, register
# (MODEL= one of pipelines/configs/*.yaml: ich, lvo, and the trauma/cardiac configs)
MODEL ?= ich
train: install-test
	$(PY) -m pipelines.make $(MODEL)

schemas: install
	$(VENV)/bin/triage schemas --write

clean:
	rm -rf demo-out .pytest_cache
