# The operator image: one static binary, the CA bundle its TLS client reads,
# a non-root user, and nothing else (no shell, no package manager).
#
# The binary is built outside the image, so the image build needs no Rust
# toolchain and the binary that is tested is the one that ships:
#
#   rustup target add x86_64-unknown-linux-musl    # once; also needs musl-gcc (Debian: musl-tools)
#   cargo build --release --locked --target x86_64-unknown-linux-musl --bin chatworkspace-operator
#   docker build -t chatworkspace-operator:0.1.0 .
#
# Run it with a read-only root filesystem and all capabilities dropped; the
# Helm chart does. See docs/operations.md.

ARG BINARY=target/x86_64-unknown-linux-musl/release/chatworkspace-operator

# Only the CA bundle is taken from here (Alpine ships it in its base image).
FROM alpine:3.22 AS certificates

FROM scratch
ARG BINARY
COPY --from=certificates /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chmod=0555 ${BINARY} /usr/local/bin/chatworkspace-operator
# The same numeric user as the chart's securityContext; scratch has no
# /etc/passwd, and none is needed.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chatworkspace-operator"]
CMD ["run"]
