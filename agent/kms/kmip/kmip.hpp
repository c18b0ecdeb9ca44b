// The KMIP 1.4 KMS provider: mutual TLS to one or more KMIP servers (PyKMIP
// in tests), AES-256-GCM wrap and unwrap with the server's Encrypt/Decrypt.
//
// Configuration ([providers.NAME] with type = "kmip"):
//   endpoints            ["host:port", ...], 1-8 servers holding the same keys,
//                        tried in this order (port 5696 when left out)   required
//   server_name          the name (or IP address) the servers' certificates
//                        must carry; default: each endpoint's host
//   ca_file              PEM CA certificate(s) that sign the servers' certificates  required
//   client_certificate   PEM client certificate (extendedKeyUsage clientAuth)  required
//   client_key_file      its private key: a root-only PEM file             one of
//   client_key_credential  ... or a systemd credential name (LoadCredential=)  these two
//   pool_size            connections kept per endpoint (1-64, default 4)
//   request_timeout      seconds one KMS request may take in all, retries and
//                        failover included (1-600, default 10)
//   connect_timeout      seconds to connect and complete the TLS handshake
//                        with one server (1-60, default 3)
//   read_timeout         seconds one server may take to answer a request
//                        (1-600, default 5)
//   failure_memory       seconds an endpoint that failed is tried after the
//                        others (0-3600, default 30)
//
// Keys: a diskcrypt key id is a KMIP Name; every Symmetric Key the client may
// see that carries the Name is one version of the key, and a version is the
// object's Unique Identifier (written into each disk header), so an unwrap
// goes straight to Decrypt (one round trip). The primary version, which new
// wraps use, is the newest by Initial Date, ties going to the larger Unique
// Identifier (compare_unique_identifiers). The associated data binds the key
// id and version, so a header naming another object does not unwrap. The
// provider creates (Create + Activate), rotates (another object under the
// Name), disables (Revoke), enables (Activate of Pre-Active versions only:
// KMIP never reactivates a revoked object) and destroys (Revoke + Destroy)
// keys; agent/README.md, "KMIP", has the whole scheme.
//
// What a KMIP server must enforce, which diskcrypt cannot: that the client
// may Encrypt and Decrypt with the key but never Get its value. PyKMIP 0.10
// authorises Encrypt/Decrypt as Get, so there a client that can unwrap can
// also read the key (agent/README.md, "KMIP").
#pragma once

#include <string>
#include <string_view>

#include "agent/error.hpp"
#include "agent/kms/kmip/messages.hpp"

namespace diskcrypt::kms::kmip {

inline constexpr std::string_view kType = "kmip";

// What a refusal concerns, for the message.
struct Context {
    std::string provider;
    std::string server;    // the endpoint that answered
    std::string identity;  // the client certificate's subject CN
    std::string key_id;
    std::string uid;
};

// The one place a KMIP result that is not success becomes an Error: by the
// reason and the operation, and, for a refused Encrypt, Decrypt, Activate,
// Revoke or Destroy, by the object's state when Get Attributes could tell it
// (KeyState::unknown otherwise).
Error map_result(const Response& r, const Context& ctx, KeyState state);

// The order of versions with the same Initial Date: <0, 0 or >0 as `a` is
// older than, the same as or newer than `b`. Numerically when both are all
// digits (PyKMIP numbers its objects), otherwise by length, then bytewise.
int compare_unique_identifiers(std::string_view a, std::string_view b);

}  // namespace diskcrypt::kms::kmip
