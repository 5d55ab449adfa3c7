// fedps-ctl tls init | issue | revoke: the federation's certificate authority for mutual
// TLS (common/tls_certs.h, docs/security.md "Certificates").
#include <cstdio>

#include "common/tls_certs.h"
#include "tools/commands.h"

namespace fedps::tools {
namespace {

struct TlsArgs {
  std::string ca_dir = "tls";
  std::string ca_name = "fedps federation CA";
  std::string name;
  std::string role = kRoleClient;
  std::vector<std::string> hosts;
  std::string out;
  int days = 365;
};

Status RunInit(const TlsArgs& a) {
  RETURN_IF_ERROR(InitCertificateAuthority(a.ca_dir, a.ca_name, a.days));
  std::printf("CA \"%s\" in %s: ca.pem (give it to every process: --tls-ca), ca.key (keep it here), crl.pem "
              "(shards: --tls-crl)\n",
              a.ca_name.c_str(), a.ca_dir.c_str());
  return Status::Ok();
}

Status RunIssue(const TlsArgs& a) {
  CertificateRequest r;
  r.name = a.name;
  r.role = a.role;
  r.hosts = a.hosts;
  r.days = a.days;
  ASSIGN_OR_RETURN(IssuedCertificate c, IssueCertificate(a.ca_dir, r, a.out.empty() ? a.ca_dir : a.out));
  std::printf("%s (%s), serial %s: %s and %s (--tls-cert, --tls-key)\n", a.name.c_str(), a.role.c_str(),
              c.serial.c_str(), c.cert_path.c_str(), c.key_path.c_str());
  return Status::Ok();
}

Status RunRevoke(const TlsArgs& a) {
  ASSIGN_OR_RETURN(int n, RevokeCertificates(a.ca_dir, a.name));
  std::printf("revoked %d certificate(s) of %s; copy %s/crl.pem to every shard's --tls-crl and restart them\n", n,
              a.name.c_str(), a.ca_dir.c_str());
  return Status::Ok();
}

}  // namespace

void AddTlsCommands(CLI::App& root, CommandList& commands) {
  auto* tls = root.add_subcommand("tls", "Certificates for mutual TLS: init (a CA), issue, revoke");
  tls->require_subcommand(1);
  auto a = std::make_shared<TlsArgs>();
  {
    auto* cmd = tls->add_subcommand("init", "Create the federation's certificate authority in --ca-dir");
    cmd->add_option("--ca-dir", a->ca_dir, "CA folder")->capture_default_str();
    cmd->add_option("--ca-name", a->ca_name, "The CA's subject CN")->capture_default_str();
    cmd->add_option("--days", a->days, "Validity in days")->capture_default_str();
    commands.push_back({cmd, [a] { return RunInit(*a); }});
  }
  {
    auto* cmd = tls->add_subcommand("issue", "Issue a certificate and key for a client, shard or operator");
    cmd->add_option("--ca-dir", a->ca_dir, "CA folder")->capture_default_str();
    cmd->add_option("--name", a->name,
                    "Holder (the certificate's CN): a client's --name, shard-<i>, or the operator's name")
        ->required();
    cmd->add_option("--role", a->role, "client, shard or operator")
        ->check(CLI::IsMember({kRoleClient, kRoleShard, kRoleOperator}))
        ->capture_default_str();
    cmd->add_option("--host", a->hosts, "subjectAltName (IP or DNS name); may repeat; optional");
    cmd->add_option("--out", a->out, "Folder for <name>.pem and <name>.key (default: the CA folder)");
    cmd->add_option("--days", a->days, "Validity in days")->capture_default_str();
    commands.push_back({cmd, [a] { return RunIssue(*a); }});
  }
  {
    auto* cmd = tls->add_subcommand("revoke", "Revoke every certificate of a holder (rewrites crl.pem)");
    cmd->add_option("--ca-dir", a->ca_dir, "CA folder")->capture_default_str();
    cmd->add_option("--name", a->name, "Holder whose certificates to revoke")->required();
    commands.push_back({cmd, [a] { return RunRevoke(*a); }});
  }
}

}  // namespace fedps::tools
