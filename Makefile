# bp-monitor: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Java helpers for Spark's JVM (jvm/), compiled against the installed pyspark's jars.
JVM_JAR := build/bp-monitor-jvm.jar
# The Spark connectors (Kafka source, Elasticsearch connector), resolved once from Maven Central.
CONNECTORS := build/connectors/.fetched
# The HL7 FHIR validator (HAPI FHIR, from Maven Central) for the conformance test: its classpath.
FHIR_VALIDATOR := build/fhir-validator/classpath
# The hostname may resolve to another interface; Spark binds to loopback here.
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: demo test chaos soak install system-deps fhir-validator up down status clean dist

## demo: install, start the local stack, run the pipeline end to end, print a summary
demo: install up
	$(PY) jobs/demo.py

## test: install, start the local stack, run the whole test suite against it
test: install fhir-validator up
	$(PY) -m pytest

## chaos: the full fault-injection scenario (kill -9, Elasticsearch hung and killed, broker killed), reconciled by id
chaos: install up
	$(PY) jobs/chaos.py

## soak: the stream job for 60 minutes on a remote-monitoring feed (1,000 patients, 200 readings/s), figures every 5 minutes, reconciled by id
soak: install up
	$(PY) jobs/soak.py

## install: OS packages where missing, then a virtualenv with the project and its dev extras
install: system-deps $(VENV)/.installed $(JVM_JAR) $(CONNECTORS)

system-deps:
	@bash stack/system-deps.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# The build backend's notes on editable installs are for packagers, not for users of make.
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e '.[dev]'
	touch $@

$(JVM_JAR): $(wildcard jvm/bpmonitor/*.java) $(VENV)/.installed
	rm -rf build/jvm && mkdir -p build/jvm
	javac -nowarn -d build/jvm -cp "$$($(PY) -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')/jars/*" \
		jvm/bpmonitor/*.java
	jar cf $@ -C build/jvm .

$(CONNECTORS): .env jvm/connectors/pom.xml $(VENV)/.installed
	@mkdir -p $(@D)
	$(PY) -m bp_spark.versions --fetch
	touch $@

## fhir-validator: fetch the HL7 FHIR validator (tests/test_conformance.py runs it, offline)
fhir-validator: $(FHIR_VALIDATOR)

$(FHIR_VALIDATOR): jvm/fhir-validator/pom.xml
	@mkdir -p $(@D)
	@echo "[deps] fetching the HL7 FHIR validator (HAPI FHIR) from Maven Central"
	mvn -B -q -f jvm/fhir-validator/pom.xml -Dmaven.repo.local=$(CURDIR)/.stack/downloads/m2 \
		dependency:build-classpath -Dmdep.outputFile=$(CURDIR)/$@.part
	mv $@.part $@

## dist: dist/bp_spark.zip, the package for spark-submit --py-files on a cluster
dist: install
	$(PY) -m bp_spark.package

## up / down / status: the local Kafka + Elasticsearch stack, as plain processes
up:
	@python3 stack/localstack.py up

down:
	@python3 stack/localstack.py down

status:
	@python3 stack/localstack.py status

## clean: stop the stack and remove its data, downloads and the demo's output
clean:
	@python3 stack/localstack.py clean
	rm -rf var dist build
