#!/bin/sh
# A python:3.11-slim-bookworm stand-in built from Debian's own packages, for machines that reach no image
# registry: debootstrap (minbase) + Debian's python3.11 and venv, the host's extra CA certificates, imported
# into podman. Run as root from anywhere:
#   deploy/tools/make-base-image.sh [TAG]          # default TAG: localhost/sftl-base:bookworm
# then build with --build-arg BASE_IMAGE=TAG (docs/cluster.md, "Build"). Needs: debootstrap, podman, and a
# Debian mirror ($DEBIAN_MIRROR, default http://deb.debian.org/debian). About 1 minute.
set -eu
TAG=${1:-localhost/sftl-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/sftl-base.XXXXXX)
trap 'rm -rf "$root"' EXIT INT TERM

debootstrap --variant=minbase \
    --include=python3.11,python3-venv,python3-distutils,python-is-python3,ca-certificates \
    bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -5 "$root.log" >&2; exit 1; }
rm -f "$root.log"

# HTTPS from inside a build must trust what the host trusts (a TLS-intercepting egress proxy, a company CA).
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
chroot "$root" update-ca-certificates >/dev/null

# What no container needs: package caches and lists, documentation, manuals, translations.
chroot "$root" apt-get clean
rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"* "$root/usr/share/doc/"* "$root/usr/share/man/"* \
    "$root/usr/share/info/"* "$root/usr/share/locale/"* "$root/var/log/"*

# pip inside the venv reads its own CA bundle unless told: point it at the system's (which holds the extra CAs).
tar -C "$root" --numeric-owner -c . | podman import --quiet \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$TAG" >/dev/null
echo "$TAG"
