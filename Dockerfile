# A FROM scratch image of AllSource Guard's static binaries: `allsource` (server,
# edge and CLI) and `upstream`, the sample service of docker-compose.cluster.yml.
# No base image, no shell, no CA bundle (the cluster talks plain HTTP or mTLS with
# its own CA). Build it with `make docker`, which first builds the binaries with
# CGO_ENABLED=0 and lays out bin/docker-rootfs (the writable /data and /tmp,
# owned by the unprivileged user the processes run as).
FROM scratch
COPY --chown=65532:65532 bin/docker-rootfs/ /
COPY bin/allsource /allsource
COPY bin/upstream /upstream
USER 65532:65532
ENV TMPDIR=/tmp
VOLUME ["/data"]
# HTTP API, raft, gossip (TCP and UDP), the sample upstream.
EXPOSE 8080 7000 7946 7946/udp 9000
ENTRYPOINT ["/allsource"]
CMD ["--help"]
