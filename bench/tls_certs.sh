#!/usr/bin/env bash
# Throwaway TLS certificates for benchmarks and manual runs (never for real use):
# a CA, and server certificates for "localhost" and 127.0.0.1 with an ECDSA P-256
# key (server-ec.pem/.key) and an RSA-2048 key (server-rsa.pem/.key).
# Usage: bench/tls_certs.sh DIR
set -euo pipefail
dir=${1:?usage: tls_certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=reactor bench CA" -keyout ca.key -out ca.pem 2>/dev/null
ext="subjectAltName=DNS:localhost,IP:127.0.0.1"
for kind in ec rsa; do
    if [ "$kind" = ec ]; then
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=localhost" -keyout server-$kind.key -out server-$kind.csr 2>/dev/null
    else
        openssl req -newkey rsa:2048 -nodes \
            -subj "/CN=localhost" -keyout server-$kind.key -out server-$kind.csr 2>/dev/null
    fi
    openssl x509 -req -in server-$kind.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 30 -extfile <(echo "$ext") -out server-$kind.pem 2>/dev/null
    rm -f server-$kind.csr
done
echo "certificates in $dir: ca.pem, server-ec.{pem,key}, server-rsa.{pem,key}"
