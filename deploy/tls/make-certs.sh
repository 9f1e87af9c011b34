#!/usr/bin/env bash
# make-certs.sh OUTDIR HOST [HOST...]
#
# A private certificate authority and one certificate + key for each Dask role of an sftl cluster
# (scheduler, worker, client), for Dask's mutual TLS (deploy/tls/dask-tls.yaml, deploy/README.md).
#
#   OUTDIR  folder to write into (created, mode 700)
#   HOST    DNS name(s) or IP address(es) the scheduler and workers are reached at; 127.0.0.1, ::1
#           and localhost are always added to the subject alternative names.
#
# Writes, in OUTDIR:
#   ca.pem                       the CA certificate: give it to every node (not secret)
#   ca.key                       the CA private key: keep it OFFLINE; it is only needed to issue more
#                                certificates, never by the scheduler, workers or clients
#   scheduler.pem  scheduler.key
#   worker.pem     worker.key
#   client.pem     client.key    one certificate (not secret) and private key (secret) per role
#
# Private keys are written with mode 600 and never printed. If OUTDIR already holds ca.pem and ca.key,
# that CA is reused and the three role certificates are issued again (rotation without re-distributing
# ca.pem). Validity in days: $DAYS (default 365) for the role certificates, $CA_DAYS (default 3650)
# for a new CA. Keys are ECDSA P-256. Needs openssl (1.1.1 or 3.x).
set -euo pipefail

usage() { echo "usage: $0 OUTDIR HOST [HOST...]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl not found on PATH" >&2; exit 1; }

out=$1
shift
days=${DAYS:-365}
ca_days=${CA_DAYS:-3650}
umask 077                              # every file and folder made below: owner only, until chmod'ed
mkdir -p "$out"
chmod 700 "$out"

# Subject alternative names: the given hosts, then the loopback names.
san=""
add_san() {
    local h=$1 entry
    if [[ $h =~ ^[0-9]+(\.[0-9]+){3}$ || $h == *:* ]]; then entry="IP:$h"; else entry="DNS:$h"; fi
    case ",$san," in *",$entry,"*) return ;; esac      # no duplicates
    san=${san:+$san,}$entry
}
for h in "$@"; do
    [[ -n $h && $h =~ ^[A-Za-z0-9.:_-]+$ ]] || { echo "$0: not a host name or IP address: '$h'" >&2; exit 2; }
    add_san "$h"
done
add_san 127.0.0.1
add_san ::1
add_san localhost

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

newkey() {  # newkey FILE: a fresh ECDSA P-256 private key, mode 600
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}
serial() { echo "0x$(openssl rand -hex 16)"; }

if [[ -f $out/ca.pem && -f $out/ca.key ]]; then
    echo "reusing the CA in $out/ca.pem"
else
    newkey "$out/ca.key"
    cat > "$work/ca.ext" <<EXT
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EXT
    openssl req -new -key "$out/ca.key" -subj "/O=sftl/CN=sftl Dask cluster CA" -out "$work/ca.csr"
    openssl x509 -req -in "$work/ca.csr" -signkey "$out/ca.key" -days "$ca_days" -sha256 \
        -set_serial "$(serial)" -extfile "$work/ca.ext" -out "$out/ca.pem" 2>/dev/null
    chmod 644 "$out/ca.pem"
fi

cat > "$work/leaf.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
# Every role both listens and connects (the scheduler also dials workers), hence serverAuth + clientAuth.
for role in scheduler worker client; do
    newkey "$work/$role.key"
    openssl req -new -key "$work/$role.key" -subj "/O=sftl/CN=sftl dask $role" -out "$work/$role.csr"
    openssl x509 -req -in "$work/$role.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -days "$days" -sha256 \
        -set_serial "$(serial)" -extfile "$work/leaf.ext" -out "$work/$role.pem" 2>/dev/null
    openssl verify -CAfile "$out/ca.pem" "$work/$role.pem" >/dev/null
    mv -f "$work/$role.key" "$out/$role.key"           # mode 600 kept
    install -m 644 "$work/$role.pem" "$out/$role.pem"
done

echo "wrote $out: ca.pem, scheduler/worker/client .pem + .key (SAN $san)"
echo "keep $out/ca.key offline; mount the rest read-only as secrets (see deploy/README.md)"
