# nearhop: `make up` starts the local three-region stack, `make test` runs every test.

CARGO ?= cargo
TEST_THREADS ?= 2

.PHONY: up test deps build lint bench clean-stack

up: deps build
	./target/debug/nearhop-stack --dir .stack

test: deps build
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=$(TEST_THREADS)

deps:
	./scripts/install-deps.sh

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-stack:
	rm -rf .stack
