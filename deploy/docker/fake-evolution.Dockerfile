# The fake Evolution API of the tests (tests/fake/fake_evolution.py, Python's standard library
# only) as an image, for compose.yaml: it stands in for Evolution API when EVOLUTION_API_URL is
# not set. Build from the repository root:
#   docker build -f deploy/docker/fake-evolution.Dockerfile -t msg-fake-evolution:local .

ARG DEBIAN_RELEASE=bookworm
FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
COPY tests/fake/fake_evolution.py /opt/fake/fake_evolution.py
# nobody:nogroup; the fake writes nothing to disk.
USER 65534:65534
WORKDIR /tmp
EXPOSE 8080
CMD ["python3", "/opt/fake/fake_evolution.py", "--host", "0.0.0.0", "--port", "8080"]
