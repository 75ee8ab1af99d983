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
	@echo "make train MODEL=<name>    - phantoms -> train -> evaluate -> export -> register into models/ (names: pipelines/configs/)"
	@echo "                             ARGS='...' passes options on (python -m pipelines.make --help)"

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

# The demo scores real DICOM from pydicom's packages plus phantoms of every finding a model reads
# (head CT, head CTA, chest CT, CT angiography, chest radiograph; positives and negatives),
# generated here with fixed seeds: kind:count:seed[:matrix].
DEMO_PHANTOMS := demo-out/phantoms
DEMO_KINDS := head_ct:4:9001 head_cta:4:9002 chest_ct_pneumothorax:2:9007 head_ct_fracture:2:9011 \
  chest_ct_pericardial_effusion:2:9012 ctpa_pe:2:9013 cta_aortic_dissection:2:9016 \
  chest_radiograph_pneumothorax:2:9019:256
demo: install
	@for k in $(DEMO_KINDS); do set -- $$(echo $$k | tr : ' '); \
	  $(PY) -m pipelines.synth --kind $$1 --n $$2 --seed $$3 --matrix $${4:-128} --out $(DEMO_PHANTOMS)/$$1 \
	  || exit 1; done
	$(VENV)/bin/triage demo --out demo-out $(foreach k,$(DEMO_KINDS),--studies $(DEMO_PHANTOMS)/$(firstword $(subst :, ,$(k)))/studies)

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
	$(PY) -m pipelines.make $(MODEL) $(ARGS)

schemas: install
	$(VENV)/bin/triage schemas --write

clean:
	rm -rf demo-out .pytest_cache
