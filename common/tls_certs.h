// The federation's certificate authority, for mutual TLS between clients, shards and the
// operator's tools (docs/security.md, "Certificates"). OpenSSL 3 does all the crypto;
// this file only lays out the folder and the certificates' fields.
//
// The CA folder (made by InitCertificateAuthority, kept by the operator):
//   ca.pem        the CA certificate: every process trusts it (tls.ca)
//   ca.key        its private key (mode 0600): never leaves the operator's machine
//   crl.pem       the certificate revocation list, signed by the CA; shards load it (tls.crl)
//   issued.json   every certificate issued: serial, name, role, hosts, expiry, revoked
//
// A certificate names its holder and role in its subject: CN = the name (a client's
// federation name, e.g. "org-a"; a shard's "shard-<i>"; the operator's), OU = the role,
// one of "client", "shard", "operator". Keys are ECDSA P-256, signatures SHA-256; every
// leaf certificate may act as a TLS server and client (extended key usage both), with
// subjectAltNames DNS/IP from `hosts` (none needed: fedps checks the CA, the CRL and the
// subject, not host names).
//
// Threads: none kept; each call reads and writes the folder (one caller at a time).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

struct x509_st;  // OpenSSL's X509

namespace fedps {

inline constexpr const char* kRoleClient = "client";
inline constexpr const char* kRoleShard = "shard";
inline constexpr const char* kRoleOperator = "operator";

// Creates `dir` with a new CA (AlreadyExists when it holds one): subject CN = `ca_name`.
Status InitCertificateAuthority(const std::string& dir, const std::string& ca_name, int days);

struct CertificateRequest {
  std::string name;                // CN
  std::string role;                // OU: client, shard or operator
  std::vector<std::string> hosts;  // subjectAltNames (IP addresses or DNS names), optional
  int days = 365;
};

struct IssuedCertificate {
  std::string cert_path;  // <out_dir>/<name>.pem, '/' in the name written '_'
  std::string key_path;   // <out_dir>/<name>.key (mode 0600)
  std::string serial;     // hex
};

// Issues a certificate signed by the CA in `ca_dir` and writes it and its new key to
// `out_dir`; records it in issued.json.
StatusOr<IssuedCertificate> IssueCertificate(const std::string& ca_dir, const CertificateRequest& request,
                                             const std::string& out_dir);

// Revokes every certificate issued under `name` that is not revoked yet and writes a new
// crl.pem; NotFound when there is none. Shards read the CRL when they start.
StatusOr<int> RevokeCertificates(const std::string& ca_dir, const std::string& name);

// The holder of a certificate, read from its subject (PEM text).
struct CertificateSubject {
  std::string name;  // CN
  std::string role;  // OU
};
StatusOr<CertificateSubject> SubjectOfPem(const std::string& pem);
// The same from a parsed certificate (OpenSSL's X509, e.g. a TLS peer's).
StatusOr<CertificateSubject> SubjectOf(const ::x509_st* cert);

}  // namespace fedps
