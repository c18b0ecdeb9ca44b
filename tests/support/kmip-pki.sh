#!/usr/bin/env bash
# A test PKI for the PyKMIP server and its clients, made with the openssl CLI.
#
# Usage: tests/support/kmip-pki.sh DIR
#
# Writes into DIR (created if missing), every key mode 0600:
#   ca.pem ca.key             CA "diskcrypt test KMIP CA"
#   server.pem server.key     CN kmip.test, SAN DNS:kmip.test IP:127.0.0.1, serverAuth
#   client.pem client.key     CN diskcrypt-agent, clientAuth
#   client2.pem client2.key   CN other-tenant, clientAuth (another KMIP identity)
#   other-ca.pem other-ca.key a second, unrelated CA
#   rogue.pem rogue.key       CN diskcrypt-agent, clientAuth, issued by other-ca
#   noauth.pem noauth.key     CN diskcrypt-agent, same CA, no extendedKeyUsage at all
#                             (the TLS handshake succeeds; PyKMIP itself refuses
#                             every request: Authentication Not Successful)
#
# Keys are EC P-256, for forward secrecy: PyKMIP's TLS 1.2 suite list puts
# the static-RSA AES128-SHA256 first and the server's order wins, so with an
# RSA server key a client offering it gets no forward secrecy; with ECDSA
# keys every suite it can pick is ECDHE (ECDHE-ECDSA-AES128-SHA256, or
# ECDHE-ECDSA-AES128-GCM-SHA256 when the client offers only GCM suites).
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: kmip-pki.sh DIR" >&2
	exit 2
fi
dir=$1
mkdir -p "$dir"
cd "$dir"
umask 077

days=3650

newkey() {
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
	chmod 0600 "$1.key"
}

# ca NAME SUBJECT: a self-signed CA certificate NAME.pem with key NAME.key.
ca() {
	newkey "$1"
	openssl req -new -x509 -key "$1.key" -out "$1.pem" -days "$days" -subj "$2" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" \
		-addext "subjectKeyIdentifier=hash" 2>/dev/null
}

# leaf NAME CN ISSUER EXTENSIONS: NAME.pem/NAME.key signed by ISSUER.pem/ISSUER.key.
leaf() {
	newkey "$1"
	openssl req -new -key "$1.key" -subj "/O=diskcrypt tests/CN=$2" -out "$1.csr" 2>/dev/null
	printf '%b' "$4" >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -out "$1.pem" \
		-days "$days" -extfile "$1.ext" 2>/dev/null
	rm -f "$1.csr" "$1.ext"
}

common='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nauthorityKeyIdentifier=keyid\n'

ca ca "/O=diskcrypt tests/CN=diskcrypt test KMIP CA"
ca other-ca "/O=somebody else/CN=unrelated test CA"
leaf server kmip.test ca "${common}extendedKeyUsage=serverAuth\nsubjectAltName=DNS:kmip.test,IP:127.0.0.1\n"
leaf client diskcrypt-agent ca "${common}extendedKeyUsage=clientAuth\n"
leaf client2 other-tenant ca "${common}extendedKeyUsage=clientAuth\n"
leaf rogue diskcrypt-agent other-ca "${common}extendedKeyUsage=clientAuth\n"
leaf noauth diskcrypt-agent ca "$common"
rm -f ./*.srl
chmod 0644 ./*.pem
