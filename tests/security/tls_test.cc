// Mutual TLS on a real fedps-shard process (ps/shard_tls.h): the certificates fedps-ctl's CA
// code issues (common/tls_certs.h); connections without a certificate, with one of another
// CA, a revoked one, and a member's certificate used under another name are refused with a
// reason; the roles of push, pull and checkpoint; plaintext refused beyond loopback.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "common/tls_certs.h"
#include "tests/security/shard_fixture.h"

namespace fedps {
namespace {

using ::testing::HasSubstr;

class TlsTest : public ShardFixture {
 protected:
  void SetUp() override {
    ShardFixture::SetUp();
    ca_ = dir_.File("ca");
    ASSERT_OK(InitCertificateAuthority(ca_, "test CA", 30));
    for (auto [name, role] : {std::pair{"shard-0", kRoleShard}, {"alice", kRoleClient}, {"bob", kRoleClient},
                              {"ops", kRoleOperator}, {"carol", kRoleClient}}) {
      ASSERT_OK(IssueCertificate(ca_, CertificateRequest{name, role, {"127.0.0.1"}, 30}, ca_).status());
    }
    auto revoked = RevokeCertificates(ca_, "carol");
    ASSERT_OK(revoked.status());
    EXPECT_EQ(*revoked, 1);
    // Another CA's certificate under a member's name.
    ASSERT_OK(InitCertificateAuthority(dir_.File("evil"), "evil CA", 30));
    ASSERT_OK(IssueCertificate(dir_.File("evil"), CertificateRequest{"alice", kRoleClient, {}, 30}, dir_.File("evil"))
                  .status());
  }

  TlsOptions As(const std::string& name, const std::string& ca_dir = "") {
    TlsOptions t;
    t.mode = "mutual";
    t.ca = JoinPath(ca_, "ca.pem");
    const std::string from = ca_dir.empty() ? ca_ : ca_dir;
    t.cert = JoinPath(from, name + ".pem");
    t.key = JoinPath(from, name + ".key");
    return t;
  }

  std::shared_ptr<TlsSocketFactory> Factory(const TlsOptions& t) {
    auto f = TlsSocketFactory::Create(t, /*server=*/false);
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    return f.ok() ? *f : nullptr;
  }

  // The shard with mutual TLS (its CRL loaded); channel_ speaks as alice.
  void StartTlsShard() {
    const TlsOptions shard = As("shard-0");
    shard_args_ = {"--tls-mode", "mutual", "--tls-ca", shard.ca, "--tls-cert", shard.cert,
                   "--tls-key", shard.key, "--tls-crl", JoinPath(ca_, "crl.pem")};
    channel_tls_ = Factory(As("alice"));
    ASSERT_NO_FATAL_FAILURE(StartShard(""));
  }

  StatusOr<rpc::ShardStatus> StatusAs(const TlsOptions& t) {
    ShardChannel ch(ShardChannelOptions{.port = port_, .tls = Factory(t)});
    return ch.GetStatus();
  }

  std::string ca_;
};

TEST(TlsCertsTest, TheCaIssuesRevokesAndKeepsKeysPrivate) {
  ScopedTempDir dir;
  const std::string ca = dir.File("ca");
  ASSERT_OK(InitCertificateAuthority(ca, "unit CA", 2));
  EXPECT_EQ(InitCertificateAuthority(ca, "again", 2).code(), StatusCode::kAlreadyExists);
  auto c = IssueCertificate(ca, CertificateRequest{"org-a", kRoleClient, {}, 2}, dir.File("out"));
  ASSERT_OK(c.status());
  auto pem = Env::Default()->ReadFile(c->cert_path);
  ASSERT_OK(pem.status());
  auto subject = SubjectOfPem(*pem);
  ASSERT_OK(subject.status());
  EXPECT_EQ(subject->name, "org-a");
  EXPECT_EQ(subject->role, "client");
  for (const std::string& key : {c->key_path, JoinPath(ca, "ca.key")}) {
    struct stat st {};
    ASSERT_EQ(::stat(key.c_str(), &st), 0) << key;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << key;
  }
  EXPECT_EQ(IssueCertificate(ca, CertificateRequest{"x", "admin", {}, 2}, dir.path()).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(IssueCertificate(ca, CertificateRequest{"../b", kRoleClient, {}, 2}, dir.path()).status().code(),
            StatusCode::kInvalidArgument);
  auto slash = IssueCertificate(ca, CertificateRequest{"org-b/gpu0", kRoleClient, {}, 2}, dir.File("out"));
  ASSERT_OK(slash.status());
  EXPECT_EQ(slash->cert_path, JoinPath(dir.File("out"), "org-b_gpu0.pem"));
  EXPECT_EQ(RevokeCertificates(ca, "nobody").status().code(), StatusCode::kNotFound);
  auto n = RevokeCertificates(ca, "org-a");
  ASSERT_OK(n.status());
  EXPECT_EQ(*n, 1);
  EXPECT_EQ(RevokeCertificates(ca, "org-a").status().code(), StatusCode::kNotFound);  // already revoked
}

TEST(TlsCertsTest, PlaintextIsOnlyForLoopbackAddresses) {
  EXPECT_OK(CheckTls(TlsOptions{}, "127.0.0.1", "ps.host"));
  EXPECT_OK(CheckTls(TlsOptions{}, "localhost", "ps.host"));
  Status s = CheckTls(TlsOptions{}, "10.0.0.7", "ps.host");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not a loopback address"));
  EXPECT_EQ(CheckTls(TlsOptions{.mode = "mutual"}, "10.0.0.7", "ps.host").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckTls(TlsOptions{.mode = "tls"}, "127.0.0.1", "ps.host").code(), StatusCode::kInvalidArgument);
  // A plaintext channel to another host is refused before any connection is tried.
  ShardChannel ch(ShardChannelOptions{.host = "10.0.0.7", .port = 9});
  auto status = ch.GetStatus();
  EXPECT_EQ(status.status().code(), StatusCode::kInvalidArgument) << status.status().ToString();
}

TEST_F(TlsTest, OnlyValidUnrevokedCertificatesOfTheCaConnect) {
  ASSERT_NO_FATAL_FAILURE(StartTlsShard());
  EXPECT_OK(StatusAs(As("alice")).status());
  EXPECT_OK(StatusAs(As("ops")).status());
  // No certificate: plaintext to the TLS port.
  ShardChannel plain(ShardChannelOptions{.port = port_});
  EXPECT_FALSE(plain.GetStatus().ok());
  // A certificate of another CA under a member's name.
  EXPECT_FALSE(StatusAs(As("alice", dir_.File("evil"))).ok());
  // A revoked certificate.
  auto carol = StatusAs(As("carol"));
  EXPECT_FALSE(carol.ok());
  EXPECT_THAT(testing::ReadLogTail(shard_.log_path()), HasSubstr("revoked"));
  // The shard still serves its members.
  EXPECT_OK(StatusAs(As("bob")).status());
}

TEST_F(TlsTest, AMemberPushesOnlyUnderItsOwnNameAndOnlyTheOperatorCheckpoints) {
  ASSERT_NO_FATAL_FAILURE(StartTlsShard());
  const int64_t alice = JoinAs("alice");
  const int64_t bob = JoinAs("bob");
  const std::vector<float> delta(static_cast<size_t>(status_.slice_elements), 0.001f);
  // alice's certificate pushing as bob: refused, nothing received.
  auto as_bob = PushAll("bob/" + std::to_string(bob) + "/1", "bob", bob, delta);
  EXPECT_FALSE(as_bob.ok());
  EXPECT_EQ(LastCode(), "IDENTITY_MISMATCH");
  EXPECT_THAT(as_bob.status().message(), HasSubstr("names alice, not client bob"));
  EXPECT_EQ(Status().receiving_updates, 0);
  // Under its own name it stages and commits.
  const std::string id = "alice/" + std::to_string(alice) + "/1";
  auto own = PushAll(id, "alice", alice, delta);
  ASSERT_OK(own.status());
  EXPECT_EQ(own->state, rpc::UpdateState::STAGED);
  ASSERT_NO_FATAL_FAILURE(CommitAndWait(id, "alice", alice, 1));
  // checkpoint(): the operator's role only.
  rpc::CheckpointRequest req;
  req.header = MakeHeader(status_.run_id, status_.layout_hash, 0, status_.epoch, "test");
  req.reason = "test";
  auto by_member = channel_->Checkpoint(req);
  EXPECT_FALSE(by_member.ok());
  EXPECT_EQ(LastCode(), "IDENTITY_MISMATCH");
  ShardChannel ops(ShardChannelOptions{.port = port_, .tls = Factory(As("ops"))});
  auto by_operator = ops.Checkpoint(req);
  ASSERT_OK(by_operator.status());
  EXPECT_EQ(by_operator->version, 1);
}

TEST_F(TlsTest, AClientRefusesAShardWhoseCertificateIsNotAShards) {
  // The shard presents a client's certificate.
  const TlsOptions wrong = As("bob");
  shard_args_ = {"--tls-mode", "mutual", "--tls-ca", wrong.ca, "--tls-cert", wrong.cert, "--tls-key", wrong.key};
  channel_tls_ = Factory(As("alice"));
  auto port = testing::PickFreePort();
  ASSERT_OK(port.status());
  port_ = *port;
  std::ofstream(dir_.File("run.toml")) << "[run]\nid = \"" << kRun << "\"\ndir = \"" << dir_.File("run")
                                       << "\"\nseed = 5\n[model]\npreset = \"tiny\"\n[data]\ntokenizer = \""
                                       << tokdir_->File("tokenizer.model") << "\"\n[ps]\nnum_shards = 1\nredis = "
                                       << "\"127.0.0.1:" << redis_.port() << "\"\n";
  ProcessOptions po;
  po.argv = {testing::BinaryDir() + "/bin/fedps-shard", "--config", dir_.File("run.toml"), "--shard", "0", "--port",
             std::to_string(port_)};
  po.argv.insert(po.argv.end(), shard_args_.begin(), shard_args_.end());
  po.log_path = dir_.File("shard.log");
  auto p = ScopedProcess::Start(po);
  ASSERT_OK(p.status());
  ShardChannel ch(ShardChannelOptions{.port = port_, .tls = channel_tls_});
  fedps::Status last;
  // Until it listens, then refused for its certificate.
  ASSERT_TRUE(WaitFor(
      [&] {
        last = ch.GetStatus().status();
        return last.message().find("not a shard's") != std::string::npos;
      },
      kLongWait, std::chrono::milliseconds(50)))
      << last.ToString() << "\n" << testing::ReadLogTail(dir_.File("shard.log"));
}

}  // namespace
}  // namespace fedps
