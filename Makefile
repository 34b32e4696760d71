# `make test` on a fresh Debian 12 machine, as root: installs everything, runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := python3-venv iproute2 iputils-ping tshark tcpdump strongswan-charon strongswan-swanctl libcharon-extra-plugins iperf3

.PHONY: test demo deps venv debs clean

test: deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The README's main job: a whole group VPN in network namespaces, shown working, then removed.
demo: deps
	$(VENV)/bin/groupvpn lab demo

deps: debs venv

debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
