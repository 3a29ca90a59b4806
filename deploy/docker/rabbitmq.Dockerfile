# RabbitMQ with the management and Prometheus plugins for compose.yaml, from Debian's own
# rabbitmq-server package so that it builds where no image registry answers
# (deploy/docker/base-image.sh makes the base there). Debian 13 (trixie) packages RabbitMQ 4.0 on Erlang 27, the 4.x series of the
# Kubernetes example; bookworm's 3.10 is long out of support (DEBIAN_RELEASE=bookworm builds it,
# the broker of the test suite).
# compose.yaml mounts the configuration and definitions into /etc/rabbitmq and keeps the data in
# a volume on /var/lib/rabbitmq; everything else is read-only. Build from the repository root:
#   docker build -f deploy/docker/rabbitmq.Dockerfile -t msg-rabbitmq:local .

ARG DEBIAN_RELEASE=trixie
FROM debian:${DEBIAN_RELEASE}-slim
# policy-rc.d: the package's postinst must not try to start a broker during the build.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
 && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d /var/lib/rabbitmq/mnesia \
 && echo '[rabbitmq_management,rabbitmq_prometheus].' >/etc/rabbitmq/enabled_plugins \
 && rm -f /etc/rabbitmq/rabbitmq-env.conf \
 && mkdir -p /etc/rabbitmq/conf.d /etc/rabbitmq/definitions.d \
 && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
# Logs to standard output; the few files RabbitMQ still writes beside them (the upgrade log, a
# crash dump) go to /tmp, a tmpfs, as the root filesystem is read-only. The node name stays
# rabbit@<hostname> (compose fixes the host name). Configuration: every
# /etc/rabbitmq/conf.d/*.conf (compose.yaml mounts its file there).
ENV RABBITMQ_LOGS=- \
    RABBITMQ_LOG_BASE=/tmp/rabbitmq \
    HOME=/var/lib/rabbitmq
USER rabbitmq
WORKDIR /var/lib/rabbitmq
VOLUME ["/var/lib/rabbitmq"]
# 15692: rabbitmq_prometheus (/metrics, and /metrics/per-object with one series per queue,
# which compose.yaml's monitoring profile scrapes).
EXPOSE 5672 15672 15692
# The server script itself, not Debian's wrapper (/usr/sbin/rabbitmq-server), which sends the
# logs to files. It traps SIGTERM and stops the node cleanly (exit 0).
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
