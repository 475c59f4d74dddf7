# syntax=docker/dockerfile:1

# Build stage. The crate needs Rust >= 1.94. build.rs compiles proto/ with protox, so no
# protoc is needed; the slim image's gcc is enough for the C parts (aws-lc, ring, the
# bundled SQLite). The cache mounts (BuildKit, Docker's default builder) keep downloaded
# crates and compiled dependencies between builds, so a source change rebuilds only
# this crate.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
# The load generator is a member of the workspace: Cargo reads its manifest to load
# the workspace, though only `kms` (the default member) is built.
COPY bench ./bench
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked \
    && cp target/release/kms /usr/local/bin/kms

# Runtime stage: the binary, CA certificates and a non-root user. (TLS to PostgreSQL
# uses the root certificates compiled into the binary, webpki-roots.)
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 kms \
    && useradd --uid 10001 --gid kms --no-create-home --home-dir /var/lib/kms \
       --shell /usr/sbin/nologin kms \
    && install -d -o kms -g kms -m 0700 /var/lib/kms
COPY --from=builder /usr/local/bin/kms /usr/local/bin/kms

# The image holds no secrets. `kms serve` needs KMS_MASTER_KEY (or KMS_MASTER_KEY_FILE
# pointing at a mounted file) from the environment, and usually KMS_DATABASE_URL for
# PostgreSQL. Tokens are signed with EdDSA by default, with keys the KMS generates and
# keeps sealed in its database: KMS_JWT_SECRET is needed only with
# KMS_JWT_ALGORITHM=HS256. With the default SQLite URL the database lives in
# /var/lib/kms/kms-data/: mount a volume there to keep it.
WORKDIR /var/lib/kms
ENV KMS_GRPC_ADDR=0.0.0.0:50051 \
    KMS_HTTP_ADDR=0.0.0.0:8003
# 50051: gRPC (Auth, Keys, Users, Audit, health, reflection, and ext_authz unless
# KMS_EXT_AUTHZ=false). 8003: HTTP (the REST API, /health, /metrics, /openapi.json,
# /.well-known/jwks.json).
EXPOSE 50051 8003
# `kms healthcheck` asks the HTTP /health endpoint (503 while the database is down);
# the slim image has no curl, and needs none. It speaks plaintext: with TLS on the HTTP
# port, set KMS_PROBE_ADDR and it asks that plaintext listener instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["kms", "healthcheck"]
# Numeric, so that Kubernetes' runAsNonRoot can check it; 10001 is the kms user above.
USER 10001:10001
ENTRYPOINT ["kms"]
CMD ["serve"]
