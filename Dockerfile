# tally with the `aws` feature (DynamoDB counters, S3 / CloudWatch Logs sources).
# Used by docker-compose.yml; `docker build -t tally .` on its own works too.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY fixtures ./fixtures
COPY queries ./queries
RUN cargo build --release --locked --bin tally

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tally /usr/local/bin/tally
USER nobody
ENTRYPOINT ["tally"]
CMD ["--help"]
