# Prometheus for compose.yaml's "monitoring" profile, from Debian's own prometheus package so
# that it builds where no image registry answers (deploy/docker/base-image.sh makes the base
# there). compose.yaml mounts deploy/monitoring/ (the scrape configuration and the alert rules)
# into /etc/prometheus/msg and keeps the data in a volume on /var/lib/prometheus/metrics2;
# everything else is read-only. Build from the repository root:
#   docker build -f deploy/docker/prometheus.Dockerfile -t msg-prometheus:local .

ARG DEBIAN_RELEASE=bookworm
FROM debian:${DEBIAN_RELEASE}-slim
# policy-rc.d: the package's postinst must not try to start Prometheus during the build.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
 && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
 && mkdir -p /var/lib/prometheus/metrics2 \
 && chown -R prometheus:prometheus /var/lib/prometheus
# The package's user, which owns the data directory (and so the volume made from it).
USER prometheus
WORKDIR /var/lib/prometheus
VOLUME ["/var/lib/prometheus/metrics2"]
EXPOSE 9090
# Prometheus stops cleanly on SIGTERM (exit 0). compose.yaml gives its own command, which
# first writes the scrape configuration with msg-api's port.
CMD ["/usr/bin/prometheus", "--config.file=/etc/prometheus/msg/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/metrics2", "--web.listen-address=0.0.0.0:9090"]
