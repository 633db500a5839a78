# syntax=docker/dockerfile:1
# Multi-stage build: compile with the full Rust toolchain, ship only the binary on a
# distroless base (glibc + CA certificates, no shell), running as a non-root user.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so editing the engine does not rebuild them.
COPY Cargo.toml Cargo.lock ./
# The patched AMQP codec (see vendor/README.md).
COPY vendor vendor
RUN mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && echo 'fn main() {}' > src/bin/bench.rs && echo 'fn main() {}' > src/bin/relay.rs \
    && cargo build --release --locked --bin chat21-engine && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin chat21-engine

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/chat21-engine /usr/local/bin/chat21-engine
USER nonroot:nonroot
ENV HTTP_PORT=8004 \
    LOG_FORMAT=json
EXPOSE 8004
ENTRYPOINT ["/usr/local/bin/chat21-engine"]
CMD ["serve"]
