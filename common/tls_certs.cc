// The certificate authority: see the header.
#include "common/tls_certs.h"

#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>

#include <nlohmann/json.hpp>

#include "common/env.h"

namespace fedps {
namespace {

template <typename T, void (*F)(T*)>
struct Free {
  void operator()(T* p) const { F(p); }
};
using Key = std::unique_ptr<EVP_PKEY, Free<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Free<X509, X509_free>>;
using Crl = std::unique_ptr<X509_CRL, Free<X509_CRL, X509_CRL_free>>;
using Bio = std::unique_ptr<BIO, Free<BIO, BIO_free_all>>;
using Bn = std::unique_ptr<BIGNUM, Free<BIGNUM, BN_free>>;
using Ext = std::unique_ptr<X509_EXTENSION, Free<X509_EXTENSION, X509_EXTENSION_free>>;
using Time = std::unique_ptr<ASN1_TIME, Free<ASN1_TIME, ASN1_TIME_free>>;
using Integer = std::unique_ptr<ASN1_INTEGER, Free<ASN1_INTEGER, ASN1_INTEGER_free>>;

// OpenSSL's error queue as text (and cleared), for a failed call named `what`.
Status OpenSslError(const std::string& what) {
  std::string detail;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!detail.empty()) detail += "; ";
    detail += buf;
  }
  return Internal(what + (detail.empty() ? "" : ": " + detail));
}

std::string BioText(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(n));
}

// A private key's file: created with mode 0600 (never readable by others, not even
// briefly), fsynced, renamed over `path`.
Status WritePrivateFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Internal("cannot create " + tmp + ": " + std::strerror(errno));
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ok = ::close(fd) == 0 && ok;
  if (!ok) {
    ::unlink(tmp.c_str());
    return Internal("cannot write " + tmp);
  }
  return Env::Default()->Rename(tmp, path);
}

std::string PemOfCert(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  return BioText(bio.get());
}

std::string PemOfKey(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  return BioText(bio.get());
}

StatusOr<Cert> ReadCert(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, Env::Default()->ReadFile(path));
  Bio bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return OpenSslError("reading the certificate " + path);
  return cert;
}

StatusOr<Key> ReadKey(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, Env::Default()->ReadFile(path));
  Bio bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  Key key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return OpenSslError("reading the private key " + path);
  return key;
}

Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  Ext ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) return OpenSslError("certificate extension " + value);
  return Status::Ok();
}

// A new certificate for `key` with subject CN = name (and OU = role when given), valid
// `days` from now, a random 63-bit serial; not signed yet.
StatusOr<Cert> NewCert(EVP_PKEY* key, const std::string& name, const std::string& role, int days) {
  Cert cert(X509_new());
  Bn serial(BN_new());
  if (!cert || !serial || X509_set_version(cert.get(), 2) != 1 || BN_rand(serial.get(), 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) ||
      !X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300) ||
      !X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 86400) ||
      X509_set_pubkey(cert.get(), key) != 1) {
    return OpenSslError("making a certificate");
  }
  X509_NAME* subject = X509_get_subject_name(cert.get());
  auto add = [&](const char* field, const std::string& value) {
    return X509_NAME_add_entry_by_txt(subject, field, MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1, 0) == 1;
  };
  if (!add("CN", name) || (!role.empty() && !add("OU", role))) return OpenSslError("certificate subject " + name);
  return cert;
}

StatusOr<Key> NewKey() {
  Key key(EVP_EC_gen("P-256"));
  if (!key) return OpenSslError("making an ECDSA P-256 key");
  return key;
}

std::string SerialHex(X509* cert) {
  Bn bn(ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), nullptr));
  char* hex = BN_bn2hex(bn.get());
  std::string out(hex);
  OPENSSL_free(hex);
  return out;
}

StatusOr<nlohmann::json> ReadIssued(const std::string& ca_dir) {
  ASSIGN_OR_RETURN(std::string text, Env::Default()->ReadFile(JoinPath(ca_dir, "issued.json")));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_array()) return DataLoss(JoinPath(ca_dir, "issued.json") + " is not a JSON array");
  return j;
}

// crl.pem from issued.json's revoked entries, signed by the CA. Valid for 10 years (a CRL
// past its nextUpdate fails every verification), reissued on each revocation.
Status WriteCrl(const std::string& ca_dir, X509* ca, EVP_PKEY* ca_key, const nlohmann::json& issued) {
  Crl crl(X509_CRL_new());
  Time now(ASN1_TIME_adj(nullptr, std::time(nullptr), 0, -300));
  Time next(ASN1_TIME_adj(nullptr, std::time(nullptr), 3650, 0));
  if (!crl || X509_CRL_set_version(crl.get(), 1) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca)) != 1 ||
      X509_CRL_set1_lastUpdate(crl.get(), now.get()) != 1 || X509_CRL_set1_nextUpdate(crl.get(), next.get()) != 1) {
    return OpenSslError("making the CRL");
  }
  for (const auto& e : issued) {
    if (!e.value("revoked", false)) continue;
    BIGNUM* raw = nullptr;
    if (BN_hex2bn(&raw, e.at("serial").get<std::string>().c_str()) == 0) return DataLoss("issued.json: bad serial");
    Bn bn(raw);
    Integer serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
    X509_REVOKED* r = X509_REVOKED_new();
    if (!serial || !r || X509_REVOKED_set_serialNumber(r, serial.get()) != 1 ||
        X509_REVOKED_set_revocationDate(r, now.get()) != 1 || X509_CRL_add0_revoked(crl.get(), r) != 1) {
      X509_REVOKED_free(r);
      return OpenSslError("adding a revoked serial to the CRL");
    }
  }
  if (X509_CRL_sort(crl.get()) != 1 || X509_CRL_sign(crl.get(), ca_key, EVP_sha256()) == 0) {
    return OpenSslError("signing the CRL");
  }
  Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_CRL(bio.get(), crl.get());
  return Env::Default()->WriteFileAtomic(JoinPath(ca_dir, "crl.pem"), BioText(bio.get()));
}

bool ValidRole(const std::string& role) {
  return role == kRoleClient || role == kRoleShard || role == kRoleOperator;
}

}  // namespace

Status InitCertificateAuthority(const std::string& dir, const std::string& ca_name, int days) {
  Env* env = Env::Default();
  if (env->Exists(JoinPath(dir, "ca.pem"))) return AlreadyExists(dir + " already holds a CA (ca.pem)");
  if (ca_name.empty()) return InvalidArgument("the CA needs a name");
  if (days < 1) return InvalidArgument("the CA must be valid for at least a day");
  RETURN_IF_ERROR(env->CreateDirs(dir));
  ASSIGN_OR_RETURN(Key key, NewKey());
  ASSIGN_OR_RETURN(Cert cert, NewCert(key.get(), ca_name, "", days));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1) return OpenSslError("CA issuer");
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) return OpenSslError("signing the CA certificate");
  RETURN_IF_ERROR(WritePrivateFile(JoinPath(dir, "ca.key"), PemOfKey(key.get())));
  RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(dir, "issued.json"), "[]\n"));
  RETURN_IF_ERROR(WriteCrl(dir, cert.get(), key.get(), nlohmann::json::array()));
  // Last: its presence marks a complete CA folder.
  return env->WriteFileAtomic(JoinPath(dir, "ca.pem"), PemOfCert(cert.get()));
}

StatusOr<IssuedCertificate> IssueCertificate(const std::string& ca_dir, const CertificateRequest& request,
                                             const std::string& out_dir) {
  if (request.name.empty() || request.name.find_first_of("\\\n") != std::string::npos ||
      request.name.find("..") != std::string::npos) {
    return InvalidArgument("certificate name '" + request.name + "' must be non-empty, without \\, newlines or ..");
  }
  if (!ValidRole(request.role)) {
    return InvalidArgument("role '" + request.role + "' is not client, shard or operator");
  }
  if (request.days < 1) return InvalidArgument("a certificate must be valid for at least a day");
  ASSIGN_OR_RETURN(Cert ca, ReadCert(JoinPath(ca_dir, "ca.pem")));
  ASSIGN_OR_RETURN(Key ca_key, ReadKey(JoinPath(ca_dir, "ca.key")));
  ASSIGN_OR_RETURN(nlohmann::json issued, ReadIssued(ca_dir));
  ASSIGN_OR_RETURN(Key key, NewKey());
  ASSIGN_OR_RETURN(Cert cert, NewCert(key.get(), request.name, request.role, request.days));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(ca.get())) != 1) return OpenSslError("issuer");
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE"));
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_key_usage, "critical,digitalSignature"));
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_ext_key_usage, "serverAuth,clientAuth"));
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_authority_key_identifier, "keyid:always"));
  if (!request.hosts.empty()) {
    std::string san;
    for (const std::string& h : request.hosts) {
      const bool ip = h.find_first_not_of("0123456789.:abcdefABCDEF") == std::string::npos &&
                      h.find_first_of(".:") != std::string::npos;
      san += (san.empty() ? "" : ",") + std::string(ip ? "IP:" : "DNS:") + h;
    }
    RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_subject_alt_name, san));
  }
  if (X509_sign(cert.get(), ca_key.get(), EVP_sha256()) == 0) return OpenSslError("signing " + request.name);
  IssuedCertificate out;
  std::string stem = request.name;  // a client name may hold '/' ("org-a/gpu0")
  std::replace(stem.begin(), stem.end(), '/', '_');
  out.cert_path = JoinPath(out_dir, stem + ".pem");
  out.key_path = JoinPath(out_dir, stem + ".key");
  out.serial = SerialHex(cert.get());
  RETURN_IF_ERROR(Env::Default()->CreateDirs(out_dir));
  RETURN_IF_ERROR(WritePrivateFile(out.key_path, PemOfKey(key.get())));
  RETURN_IF_ERROR(Env::Default()->WriteFileAtomic(out.cert_path, PemOfCert(cert.get())));
  issued.push_back({{"serial", out.serial},
                    {"name", request.name},
                    {"role", request.role},
                    {"hosts", request.hosts},
                    {"days", request.days},
                    {"issued_unix", static_cast<int64_t>(std::time(nullptr))},
                    {"revoked", false}});
  RETURN_IF_ERROR(Env::Default()->WriteFileAtomic(JoinPath(ca_dir, "issued.json"), issued.dump(2) + "\n"));
  return out;
}

StatusOr<int> RevokeCertificates(const std::string& ca_dir, const std::string& name) {
  ASSIGN_OR_RETURN(Cert ca, ReadCert(JoinPath(ca_dir, "ca.pem")));
  ASSIGN_OR_RETURN(Key ca_key, ReadKey(JoinPath(ca_dir, "ca.key")));
  ASSIGN_OR_RETURN(nlohmann::json issued, ReadIssued(ca_dir));
  int revoked = 0;
  for (auto& e : issued) {
    if (e.value("name", "") != name || e.value("revoked", false)) continue;
    e["revoked"] = true;
    e["revoked_unix"] = static_cast<int64_t>(std::time(nullptr));
    ++revoked;
  }
  if (revoked == 0) return NotFound("no certificate of '" + name + "' left to revoke in " + ca_dir);
  RETURN_IF_ERROR(WriteCrl(ca_dir, ca.get(), ca_key.get(), issued));
  RETURN_IF_ERROR(Env::Default()->WriteFileAtomic(JoinPath(ca_dir, "issued.json"), issued.dump(2) + "\n"));
  return revoked;
}

StatusOr<CertificateSubject> SubjectOf(const ::x509_st* cert) {
  if (cert == nullptr) return InvalidArgument("no certificate");
  const X509_NAME* subject = X509_get_subject_name(cert);
  auto field = [&](int nid) {
    const int at = X509_NAME_get_index_by_NID(subject, nid, -1);
    if (at < 0) return std::string();
    const ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
    return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)));
  };
  CertificateSubject out{field(NID_commonName), field(NID_organizationalUnitName)};
  if (out.name.empty()) return InvalidArgument("the certificate's subject has no CN");
  return out;
}

StatusOr<CertificateSubject> SubjectOfPem(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return OpenSslError("parsing a PEM certificate");
  return SubjectOf(cert.get());
}

}  // namespace fedps
