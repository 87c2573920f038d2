# nearhop: `make up` starts the local three-region stack, `make test` runs every test.

CARGO ?= cargo
TEST_THREADS ?= 2

.PHONY: up test deps build lint bench clean-stack lab rollout-test

# `make up ACME=1`: Pebble runs too and control obtains the edges' certificates from it.
up: deps build
	./target/debug/nearhop-stack --dir .stack $(if $(ACME),--acme)

# Every test: the workspace's (unit, integration against real processes), then the Ansible
# rollout check in a lab of namespaced hosts (needs root, as CI has; docs/lab.md).
test: deps build
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=$(TEST_THREADS)
	$(MAKE) rollout-test

deps:
	./scripts/install-deps.sh

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-stack:
	rm -rf .stack

# The Ansible lab (docs/lab.md): `lab` starts its hosts and converges site.yml on them (stop
# it with lab/lab.py down); `rollout-test` runs the whole rollout check in a lab of its own.
lab: build
	./scripts/install-lab-deps.sh
	./lab/up.sh

rollout-test: build
	./scripts/install-lab-deps.sh
	./lab/rollout-test.sh
