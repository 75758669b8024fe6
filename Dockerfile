# shardhook in a container: a build stage with Rust, a small runtime stage without it.
#   docker build -t shardhook .
#   docker run --rm shardhook demo        # the embedded default: no token, no config
#   docker run -d -v shardhook-state:/var/lib/shardhook -v ./shardhook.toml:/etc/shardhook/shardhook.toml:ro \
#     -e DISCORD_TOKEN -e SHARDHOOK_SIGNING_SECRET shardhook
# The base images are arguments so a machine without Docker Hub can give its own
# (scripts/container-check does).
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# A builder image that already holds /out/shardhook (scripts/container-check builds it on the
# host, having no Rust image to pull) skips the build.
# The release profile keeps line tables for profiling; the image ships the binary stripped
# (132 MB to 22 MB).
RUN if [ ! -x /out/shardhook ]; then \
      cargo build --release --locked -p shardhook --bin shardhook \
      && install -D -m 0755 -s target/release/shardhook /out/shardhook; \
    fi

FROM ${RUNTIME_IMAGE} AS runtime
# The platform's CA roots, for Discord's API and HTTPS endpoints.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --system --uid 10001 --home-dir /var/lib/shardhook --shell /usr/sbin/nologin shardhook \
    && install -d -o shardhook -g shardhook -m 0700 /var/lib/shardhook \
    && install -d -m 0755 /etc/shardhook
COPY --from=build /out/shardhook /usr/local/bin/shardhook
USER shardhook
ENV SHARDHOOK__STATE__DIR=/var/lib/shardhook \
    SHARDHOOK__CONTROL__LISTEN="0.0.0.0:8080" \
    RUST_LOG=info
# Checkpoints, spool, dead letters, spent ids: keep them across restarts.
VOLUME /var/lib/shardhook
# The control API (and the REST proxy unless rest.listen moves it): publish it on a private
# network only.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s \
    CMD ["/usr/local/bin/shardhook", "health", "--url", "http://127.0.0.1:8080/healthz"]
# SIGTERM closes the shards resumably and delivers what is queued: give `docker stop` longer
# than delivery.shutdown_timeout (`docker stop -t 30`, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/shardhook"]
CMD ["run", "--config", "/etc/shardhook/shardhook.toml"]
