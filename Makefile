# The README's commands: `make lab` (bring the lab up and deploy), `make test`, `make lab-down`.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
APT_PACKAGES := debootstrap systemd-container dpkg-dev iproute2 nftables python3-venv postgresql-15 \
	python3-dev util-linux procps chromium wrk haproxy nginx pgbouncer etcd-server openssh-client \
	openssl prometheus prometheus-alertmanager
PYTEST_ARGS ?=

.PHONY: lab lab-down yandex-lab yandex-lab-down test test-unit lint bench deps apt venv

lab: deps
	bin/lab up
	bin/deploy

# `bin/lab down` also removes whatever the emulated cloud made.
lab-down:
	bin/lab down

# The Yandex path on the emulated Yandex Cloud (lab/yandex/cloud.py): the user's commands, as
# the README gives them, against the fake API on loopback whose VMs are lab hosts. `bin/lab
# cloud storage` stands in for the user's `yc` commands that make the bucket and access key.
YANDEX_MAP := cloud.maps.d/yandex.map
yandex-lab: deps
	$(VENV)/bin/python bin/lab cloud up
	$(VENV)/bin/python bin/lab cloud storage
	$(VENV)/bin/python bin/lab cloud ca
	$(VENV)/bin/salt-cloud -f ensure_network yandex
	$(VENV)/bin/salt-cloud -m $(YANDEX_MAP) -P -y
	bin/deploy

# Only against the emulation: `bin/lab cloud use` fails unless it runs, and points salt-cloud at
# its provider config (never at a real cloud.providers.d/yandex.conf).
yandex-lab-down:
	$(VENV)/bin/python bin/lab cloud use
	$(VENV)/bin/salt-cloud -m $(YANDEX_MAP) -d -y
	$(VENV)/bin/salt-cloud -f destroy_network yandex
	$(VENV)/bin/python bin/lab cloud down

test: deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: venv
	$(VENV)/bin/pytest -m "not lab" $(PYTEST_ARGS)

# Benchmarks, about two hours in all; each prints its progress and also runs alone. The
# first rebuilds the lab from bare hosts (to time the deployment); the others use that cluster.
bench: deps
	@echo "bench: deployment from bare hosts, REBUILDS THE LAB (about 6 minutes)"
	$(VENV)/bin/python bench/deploy.py
	@echo "bench: failover write outage, project and stock timing, a writer on each data path, 3 runs each (about 30 minutes)"
	$(VENV)/bin/python bench/failover.py
	@echo "bench: certificate rotation under write load, next to switchovers, 3 pairs (about 8 minutes)"
	$(VENV)/bin/python bench/rotation.py
	@echo "bench: the cost of TLS, off and on interleaved, 3 pairs (about 45 minutes)"
	$(VENV)/bin/python bench/tls.py
	@echo "bench: routing overhead, pgbench on seven paths, 40 rounds of 1 s interleaved (about 11 minutes)"
	$(VENV)/bin/python bench/routing.py
	@echo "bench: web app on each data path, 5 rounds interleaved (about 5 minutes)"
	$(VENV)/bin/python bench/web.py
	@echo "bench: memory per host and service, idle and under pgbench (about 1 minute)"
	$(VENV)/bin/python bench/memory.py
	@echo "bench: backups and a point-in-time restore, REPLACES THE CLUSTER'S DATA (about 3 minutes)"
	$(VENV)/bin/python bench/backup.py
	@echo "bench: the Yandex path on the emulated cloud, TAKES THE LAB DOWN (about 8 minutes)"
	$(VENV)/bin/python bench/deploy.py --yandex

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/yamllint -s .
	find salt -name '*.sls' -print0 | xargs -0 -r $(VENV)/bin/salt-lint

deps: apt venv

# Debian packages the lab and the tests need on this machine; installed only when one is
# missing, and without starting or enabling a service (bin/host-packages says what it did).
# debootstrap, systemd-container, dpkg-dev, iproute2, nftables, util-linux, procps: the lab;
# python3-venv, python3-dev: .venv; postgresql-15: the web app's tests and the pg_hba check;
# haproxy, nginx, pgbouncer, etcd-server: the rendered configs, each checked by its own tool;
# prometheus, prometheus-alertmanager: promtool tests the alert rules, amtool checks the config;
# chromium: the browser test; wrk: bench/web.py; openssh-client: salt-cloud's SSH bootstrap of
# the emulated cloud's VMs.
apt:
	@bin/host-packages $(APT_PACKAGES)

# The Salt environment: Debian's own python3 (3.11, as in the lab hosts, which run their
# minions from it read-only). Rebuilt when requirements.txt changes.
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@
