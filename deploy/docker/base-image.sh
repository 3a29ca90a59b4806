#!/usr/bin/env bash
# Makes sure the base images of deploy/docker/*.Dockerfile exist: an image already there is
# kept, else it is pulled, else (no image registry answers) it is made from Debian's own packages
# with debootstrap and `docker import`, trimmed like the registry's "-slim" images.
#
#   deploy/docker/base-image.sh [IMAGE...]     (root, dockerd running)
#
# Default: debian:bookworm-slim (the daemons' and the fake's images) and debian:trixie-slim (the
# broker's: Debian 13 packages RabbitMQ 4.0). The packages come from the Debian mirror this
# machine's apt already uses (its sources.list and sources.list.d, read at run time), and the
# image's own apt sources are the same entries, so `apt-get install` inside `docker build`
# reaches the same mirror. Prints what it did and how long it took; exit status 0 when every
# image exists afterwards.
set -euo pipefail

[ $# -gt 0 ] || set -- debian:bookworm-slim debian:trixie-slim
if [ $# -gt 1 ]; then
  for image in "$@"; do "$0" "$image"; done
  exit 0
fi
IMAGE="$1"
RELEASE="${IMAGE#*:}"
RELEASE="${RELEASE%-slim}"
PULL_TIMEOUT="${MSG_PULL_TIMEOUT:-60}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base-image: $IMAGE is there already"
  exit 0
fi
if timeout "$PULL_TIMEOUT" docker pull -q "$IMAGE" >/dev/null 2>&1; then
  echo "base-image: pulled $IMAGE"
  exit 0
fi
echo "base-image: no registry gave $IMAGE; making it from Debian packages (debootstrap $RELEASE)"

if ! command -v debootstrap >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# The host's Debian entries for this release (RELEASE, RELEASE-updates, RELEASE-security, ...),
# one "URI SUITE COMPONENTS" line each, from one-line and deb822 sources alike. Other vendors'
# entries (their own suites and keys) stay out of the image. A release the host has no entry
# for (a trixie image on a bookworm host) gets the host's own release's entries, renamed: the
# same mirrors serve every Debian release.
host_entries() {
  python3 - "$RELEASE" <<'EOF'
import glob, sys

def entries():
    """(uri, suite, components) of every enabled deb entry of this machine's apt sources."""
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                words = [w for w in words[1:] if not w.startswith("[") and not w.endswith("]")]
                yield words[0], words[1], words[2:]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        stanza = {}
        for line in open(path, encoding="utf-8").read().splitlines() + [""]:
            if not line.strip():
                if "deb" in stanza.get("types", "").split() and stanza.get("enabled", "yes") != "no":
                    for uri in stanza.get("uris", "").split():
                        for suite in stanza.get("suites", "").split():
                            yield uri, suite, stanza.get("components", "").split()
                stanza = {}
            elif not line.startswith("#") and ":" in line and not line[0].isspace():
                k, v = line.split(":", 1)
                stanza[k.strip().lower()] = v.strip()

def of(release):
    out = []
    for uri, suite, comps in entries():
        if suite == release or suite.startswith(release + "-"):
            e = f"{uri.rstrip('/')} {suite} {' '.join(comps) or 'main'}"
            if e not in out:
                out.append(e)
    return out

release = sys.argv[1]
found = of(release)
if not found:
    host = ""
    for line in open("/etc/os-release", encoding="utf-8"):
        if line.startswith("VERSION_CODENAME="):
            host = line.split("=", 1)[1].strip().strip('"')
    if host:
        found = [e.replace(f" {host}", f" {release}", 1) for e in of(host)]
print("\n".join(found))
EOF
}

entries="$(host_entries)"
mirror="$(awk -v r="$RELEASE" '$2 == r { print $1; exit }' <<<"$entries")"
if [ -z "$mirror" ]; then
  echo "base-image: this machine's apt sources have no entry for $RELEASE; cannot debootstrap" >&2
  exit 1
fi

root="$(mktemp -d /tmp/msg-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
start=$(date +%s)
if ! debootstrap --variant=minbase --components=main "$RELEASE" "$root" "$mirror" \
       >"$root.log" 2>&1; then
  tail -20 "$root.log" >&2
  rm -f "$root.log"
  exit 1
fi
rm -f "$root.log"

# Apt inside the image: the same entries as the host, and the trimming of the "-slim" images
# (no documentation, manual pages or translations, no package lists or caches kept).
rm -f "$root/etc/apt/sources.list"
awk '{ printf "Types: deb\nURIs: %s\nSuites: %s\nComponents:", $1, $2;
       for (i = 3; i <= NF; i++) printf " %s", $i;
       printf "\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n" }' \
  <<<"$entries" >"$root/etc/apt/sources.list.d/debian.sources"
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
       "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
       "$root/etc/hostname" "$root/etc/resolv.conf"
: >"$root/etc/machine-id"

tar --numeric-owner -C "$root" -c . |
  docker import \
    --change 'CMD ["bash"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian $RELEASE (debootstrap --variant=minbase, trimmed like -slim), made by deploy/docker/base-image.sh\"" \
    - "$IMAGE" >/dev/null
echo "base-image: made $IMAGE in $(( $(date +%s) - start )) s" \
     "($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
