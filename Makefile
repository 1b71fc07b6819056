# The README's commands. Each installs what is missing first (apt-get as root, Homebrew on macOS; otherwise it
# says what to install).
SWIFT ?= swift

.PHONY: deps build test test-hiredis1 clean

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build

## Unit and integration tests against a private redis-server on a free loopback port.
test: deps
	$(SWIFT) build --build-tests
	scripts/with-redis.sh $(SWIFT) test --skip-build

## The same tests built against hiredis 1.x (compiled from PyPI's hiredis sdist into .build-hiredis1/).
test-hiredis1: deps
	scripts/test-hiredis1.sh

clean:
	rm -rf .build .build-hiredis1
