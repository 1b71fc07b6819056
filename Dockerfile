# The notifications demo's binaries. Build: docker build -t redis-pubsub-demo .   (or: docker compose up --build)
# Both stages install with scripts/install-deps.sh, the script `make` uses.

FROM swift:6.1-bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN scripts/install-deps.sh --build && rm -rf /var/lib/apt/lists/*
COPY Package.swift ./
COPY Sources ./Sources
COPY Examples ./Examples
COPY Tests ./Tests
RUN swift build -c release --static-swift-stdlib --product subscriber \
    && swift build -c release --static-swift-stdlib --product publisher \
    && mkdir -p /out \
    && cp "$(swift build -c release --show-bin-path)/subscriber" "$(swift build -c release --show-bin-path)/publisher" /out/

FROM debian:bookworm-slim
COPY scripts/install-deps.sh /usr/local/bin/install-deps.sh
RUN install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /usr/local/bin/install-deps.sh
COPY --from=build /out/subscriber /out/publisher /usr/local/bin/
USER 65534:65534
ENV REDIS_URL=redis://redis:6379
CMD ["publisher"]
