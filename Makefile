# The README's commands. Each installs what is missing first (apt-get as root, Homebrew on macOS; otherwise it
# says what to install).
SWIFT ?= swift

.PHONY: deps build test clean

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build

## Unit and integration tests against a private redis-server on a free loopback port.
test: deps
	$(SWIFT) build --build-tests
	scripts/with-redis.sh $(SWIFT) test --skip-build

clean:
	rm -rf .build
