#!/bin/sh
# Makes throwaway TLS certificates for trying rediss:// out: a CA, a server certificate and a client certificate
# (for mutual TLS), each valid for 30 days. Nothing here is of any real use: the keys are unencrypted and readable by
# everyone (the containers of docker-compose.tls.yml run as other users), and a new set is made on every run.
#
#   scripts/make-test-certs.sh DIRECTORY [SERVER-NAME]
#
# The server certificate names SERVER-NAME (default: redis), localhost and 127.0.0.1. Files: ca.crt, server.crt,
# server.key, client.crt, client.key.
set -eu

directory=${1:?usage: make-test-certs.sh DIRECTORY [SERVER-NAME]}
name=${2:-redis}
mkdir -p "$directory"
cd "$directory"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
# shellcheck disable=SC2086  # $key is several arguments on purpose
openssl req -x509 $key -keyout "$work/ca.key" -out ca.crt -days 30 -subj "/CN=redis-pubsub test CA" 2>/dev/null

make_certificate() {  # file name, subject, extensions
    printf '%s\n' "$3" >"$work/$1.ext"
    # shellcheck disable=SC2086
    openssl req $key -keyout "$1.key" -out "$work/$1.csr" -subj "/CN=$2" 2>/dev/null
    openssl x509 -req -in "$work/$1.csr" -CA ca.crt -CAkey "$work/ca.key" -CAcreateserial -CAserial "$work/ca.srl" \
        -out "$1.crt" -days 30 -extfile "$work/$1.ext" 2>/dev/null
}
make_certificate server "$name" "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1"
make_certificate client "redis-pubsub test client" "extendedKeyUsage=clientAuth"
chmod 644 ca.crt server.crt server.key client.crt client.key
echo "test certificates for $name in $directory: ca.crt, server.crt/.key, client.crt/.key"
