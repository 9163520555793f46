# onedotzero: every target sets up what it needs (`make setup` is idempotent and fast when done).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
INVENTORY ?= $(if $(wildcard cluster.yml),cluster.yml,testbed/cluster.yml)
PYTEST_ARGS ?=

# Debian/Ubuntu packages the toolkit and its virtual cluster call. systemd-container (nspawn, for container
# nodes) goes in without recommends: libnss-mymachines would edit the host's nsswitch.conf.
APT_PACKAGES := python3-venv rsync openssh-client openssh-server gpg gpg-agent iproute2 \
	debootstrap squashfs-tools zstd xorriso debian-archive-keyring \
	dnsmasq-base nginx-light nfs-ganesha nfs-ganesha-vfs rpcbind \
	pxelinux syslinux-common syslinux-efi ipxe \
	qemu-system-x86 qemu-utils ovmf ipxe-qemu procps psmisc \
	systemd-container iperf3 nftables

# What only the tests need besides: a browser for the chat page.
TEST_APT_PACKAGES := chromium chromium-driver
# The virtual cluster's control node runs Debian's Prometheus binary, unpacked here, not installed: the package
# would start a Prometheus in this machine's own network namespace (testbed/bed.py PROMETHEUS).
# (prometheus-node-exporter: benchmarks/bench_telemetry.py runs it beside an engine.)
TOOLS_DIR := /var/cache/onedotzero/tools
TOOLS_PACKAGES := prometheus prometheus-node-exporter

.PHONY: help setup apt apt-test tools venv test test-unit test-integration lint image image-live control demo testbed-up testbed-down clean
help:  ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: apt venv tools  ## Install Debian packages (as root) and the Python venv; idempotent

tools:
	@for pkg in $(TOOLS_PACKAGES); do \
	  [ -d $(TOOLS_DIR)/$$pkg/usr/bin ] && continue; \
	  if [ "$$(id -u)" != 0 ]; then echo "make setup: run as root to unpack Debian's $$pkg into $(TOOLS_DIR)" >&2; exit 1; fi; \
	  tmp=$$(mktemp -d); \
	  (cd "$$tmp" && apt-get download -qq $$pkg 2>/dev/null) && \
	  rm -rf $(TOOLS_DIR)/$$pkg.tmp && mkdir -p $(TOOLS_DIR) && dpkg-deb -x "$$tmp"/$${pkg}_*.deb $(TOOLS_DIR)/$$pkg.tmp && \
	  rm -rf $(TOOLS_DIR)/$$pkg && mv $(TOOLS_DIR)/$$pkg.tmp $(TOOLS_DIR)/$$pkg && \
	  echo "unpacked $$(basename "$$tmp"/$${pkg}_*.deb) into $(TOOLS_DIR)/$$pkg"; rm -rf "$$tmp"; \
	done

apt-test:
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(TEST_APT_PACKAGES)"

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make setup: run as root to install: $$missing" >&2; exit 1; fi; \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

test: setup apt-test  ## Run every test tier (integration tiers need root, as in CI)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: venv  ## Fast unit and golden-file tests only
	$(VENV)/bin/pytest -m 'not integration' $(PYTEST_ARGS)

test-integration: setup apt-test  ## Root/QEMU/namespace tests only
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

lint: venv  ## ruff, yamllint, ansible-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/yamllint -s .
	cd playbooks && PATH=$(abspath $(VENV))/bin:$$PATH ansible-lint --offline -q --profile production .

image: setup  ## Build the inventory's golden image (INVENTORY=path)
	$(PY) cluster.py -i $(INVENTORY) image build golden

image-live: setup  ## Fetch, verify and publish the inventory's live image (INVENTORY=path)
	$(PY) cluster.py -i $(INVENTORY) image build live

control: setup  ## Configure this host as the control node (playbooks/control.yml, preflight first)
	ANSIBLE_CONFIG=playbooks/ansible.cfg ONEDOTZERO_INVENTORY=$(abspath $(INVENTORY)) $(VENV)/bin/ansible-playbook playbooks/control.yml

demo: setup  ## The virtual cluster end to end: build, serve, boot, status, tear down (KEEP=1 keeps it)
	$(PY) -m testbed.demo $(if $(KEEP),--keep,)

testbed-up: setup  ## Start the virtual cluster and leave it running
	$(PY) cluster.py -i testbed/cluster.yml testbed up

testbed-down:  ## Stop the virtual cluster
	$(PY) cluster.py -i testbed/cluster.yml testbed down

clean:  ## Remove the venv and caches in the clone (not the image store or download cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
