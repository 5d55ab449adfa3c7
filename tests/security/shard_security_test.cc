// The attacks of issue 10 on a shard's receive path, replayed against a real redis-server
// and a real fedps-shard process from a Thrift client (ShardChannel) and raw sockets:
// update-id squatting and pushes from non-members, junk first frames and per-client quotas,
// stalled partial requests, idle and surplus connections, oversized requests. Each attack
// is refused with a reason, and an honest member still stages and commits its own bytes.
// The limits are configured small; waits are conditions with generous deadlines, and no
// assertion is about how long anything took.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <span>

#include "common/env.h"
#include "compression/codec.h"
#include "ps/registry.h"
#include "ps/rpc/shard_types.h"
#include "ps/shard_channel.h"
#include "tests/testing/process.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/temp_dir.h"
#include "tests/security/shard_fixture.h"

namespace fedps {
namespace {

using ::testing::HasSubstr;
using testing::ProcessOptions;
using testing::ScopedProcess;
using testing::ScopedRedisServer;
using testing::ScopedTempDir;
using testing::WaitFor;

using ShardSecurityTest = ShardFixture;

std::vector<float> Delta(float scale, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i % 17 - 8);
  return v;
}

// The resident memory of a process, in bytes (0 when it cannot be read).
int64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      int64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
    in.ignore(1 << 12, '\n');
  }
  return 0;
}

// One TCP connection of an attacker: bytes in, nothing parsed.
class RawConnection {
 public:
  explicit RawConnection(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return fd_ >= 0; }
  bool Send(const std::string& bytes) {
    for (size_t sent = 0; sent < bytes.size();) {
      ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  // True the first time it finds the connection closed by the shard (end of stream or reset).
  bool Closed() {
    if (seen_closed_) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    seen_closed_ = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    return seen_closed_;
  }
  // True once the shard closed the connection within `timeout`.
  bool WaitClosed(std::chrono::milliseconds timeout) {
    return WaitFor([&] { return Closed(); }, timeout, std::chrono::milliseconds(20));
  }

 private:
  int fd_ = -1;
  bool seen_closed_ = false;
};

// The 4-byte big-endian size prefix of a framed Thrift message.
std::string FramePrefix(uint32_t size) {
  uint32_t be = htonl(size);
  return std::string(reinterpret_cast<const char*>(&be), sizeof(be));
}


TEST_F(ShardSecurityTest, SquattedUpdateIdsAreRefusedAndTheMemberCommitsItsOwnBytes) {
  ASSERT_NO_FATAL_FAILURE(StartShard(""));
  const int64_t alice = JoinAs("alice");
  const std::string alice_next = "alice/" + std::to_string(alice) + "/1";
  const std::vector<float> own = Delta(1e-3f, status_.slice_elements);
  const std::vector<float> stranger = Delta(-0.125f, status_.slice_elements);
  const std::vector<std::string> stranger_frames = Frames(stranger);
  int64_t v0 = -1;
  const std::vector<float> x0 = Pull(&v0);
  ASSERT_EQ(v0, 0);

  // A stranger: under its own name (not a member), under alice's id with its own name, and
  // under alice's name with an epoch she never had.
  auto r = channel_->Push(Request("mallory/999999/1", "mallory", 999999, 0, stranger_frames[0]));
  EXPECT_EQ(r.status().code(), StatusCode::kAborted);
  EXPECT_EQ(LastCode(), "NOT_MEMBER");
  EXPECT_THAT(r.status().message(), HasSubstr("not a live member"));
  r = channel_->Push(Request(alice_next, "mallory", 999999, 0, stranger_frames[0]));
  EXPECT_EQ(LastCode(), "BAD_REQUEST") << r.status().ToString();
  r = channel_->Push(Request("alice/999999/1", "alice", 999999, 0, stranger_frames[0]));
  EXPECT_EQ(LastCode(), "NOT_MEMBER") << r.status().ToString();
  EXPECT_EQ(Status().receiving_updates, 0);

  // One who knows alice's name and epoch (open until mutual TLS binds the name to a
  // certificate, docs/security.md) stages her next id first: her own bytes are then
  // refused, not answered STAGED, so she never commits the stranger's delta as hers.
  auto squat = PushAll(alice_next, "alice", alice, stranger);
  ASSERT_OK(squat.status());
  EXPECT_EQ(squat->state, rpc::UpdateState::STAGED);
  const std::vector<std::string> own_frames = Frames(own);
  r = channel_->Push(Request(alice_next, "alice", alice, 0, own_frames[0]));
  EXPECT_EQ(LastCode(), "BAD_REQUEST") << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("staged with other bytes"));
  // A resend of the staged bytes themselves is still acknowledged (idempotency).
  r = channel_->Push(Request(alice_next, "alice", alice, 0, stranger_frames[0]));
  ASSERT_OK(r.status());
  EXPECT_EQ(r->state, rpc::UpdateState::STAGED);

  // Her next update commits with her own bytes.
  const std::string alice_own = "alice/" + std::to_string(alice) + "/2";
  auto staged = PushAll(alice_own, "alice", alice, own);
  ASSERT_OK(staged.status());
  EXPECT_EQ(staged->state, rpc::UpdateState::STAGED);
  r = channel_->Push(Request(alice_own, "alice", alice, 1, stranger_frames[1]));
  EXPECT_EQ(LastCode(), "BAD_REQUEST") << r.status().ToString();
  ASSERT_NO_FATAL_FAILURE(CommitAndWait(alice_own, "alice", alice, 1));
  int64_t v1 = -1;
  const std::vector<float> x1 = Pull(&v1);
  EXPECT_EQ(v1, 1);
  ASSERT_EQ(x1.size(), x0.size());
  for (size_t j = 0; j < x0.size(); ++j) ASSERT_NEAR(x1[j], x0[j] - own[j], 1e-6f) << "@" << j;
}

TEST_F(ShardSecurityTest, AStagedUpdateIsComparedWithItsBytesAfterARestart) {
  ASSERT_NO_FATAL_FAILURE(StartShard(""));
  const int64_t alice = JoinAs("alice");
  const std::string id = "alice/" + std::to_string(alice) + "/1";
  const std::vector<float> own = Delta(1e-3f, status_.slice_elements);
  auto staged = PushAll(id, "alice", alice, own);
  ASSERT_OK(staged.status());
  ASSERT_EQ(staged->state, rpc::UpdateState::STAGED);
  ASSERT_OK(shard_.Kill());
  ASSERT_NO_FATAL_FAILURE(Launch());
  // The checksums came back from the staged file, not from memory.
  auto r = channel_->Push(
      Request(id, "alice", alice, 0, Frames(Delta(0.5f, status_.slice_elements))[0]));
  EXPECT_EQ(LastCode(), "BAD_REQUEST") << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("staged with other bytes"));
  r = channel_->Push(Request(id, "alice", alice, 0, Frames(own)[0]));
  ASSERT_OK(r.status());
  EXPECT_EQ(r->state, rpc::UpdateState::STAGED);
}

TEST_F(ShardSecurityTest, JunkFirstFramesTakeNoReceiveSlotsAndQuotasAreSeparatePerClient) {
  ASSERT_NO_FATAL_FAILURE(
      StartShard("receiving_updates = 4\nreceiving_updates_per_client = 2\n"
                 "staged_updates_per_client = 2\n"));
  const int64_t alice = JoinAs("alice");
  const int64_t bob = JoinAs("bob");
  const std::vector<float> delta = Delta(1e-3f, status_.slice_elements);
  const std::vector<std::string> frames = Frames(delta);

  // 16 junk first frames and 16 well-formed ones from a non-member: all refused, no slot.
  for (int k = 0; k < 16; ++k) {
    auto r = channel_->Push(
        Request("mallory/7/" + std::to_string(k), "mallory", 7, 0, std::string(64 + k, 'x')));
    EXPECT_FALSE(r.ok());
    EXPECT_TRUE(LastCode() == "BAD_REQUEST" || LastCode() == "DATA_LOSS") << r.status().ToString();
    r = channel_->Push(Request("mallory/7/" + std::to_string(100 + k), "mallory", 7, 0, frames[0]));
    EXPECT_EQ(LastCode(), "NOT_MEMBER") << r.status().ToString();
  }
  EXPECT_EQ(Status().receiving_updates, 0);

  // A member holds at most its own quota of partly received updates ...
  auto id = [](int64_t epoch, const std::string& who, int k) {
    return who + "/" + std::to_string(epoch) + "/" + std::to_string(k);
  };
  for (int k = 1; k <= 2; ++k)
    ASSERT_OK(
        channel_->Push(Request(id(alice, "alice", k), "alice", alice, 0, frames[0])).status());
  auto r = channel_->Push(Request(id(alice, "alice", 3), "alice", alice, 0, frames[0]));
  EXPECT_EQ(LastCode(), "UNAVAILABLE");
  EXPECT_THAT(r.status().message(), HasSubstr("limits.receiving_updates_per_client"));
  EXPECT_EQ(Status().receiving_updates, 2);

  // ... so another member still stages and commits.
  auto staged = PushAll(id(bob, "bob", 1), "bob", bob, delta);
  ASSERT_OK(staged.status());
  EXPECT_EQ(staged->state, rpc::UpdateState::STAGED);
  ASSERT_NO_FATAL_FAILURE(CommitAndWait(id(bob, "bob", 1), "bob", bob, 1));

  // Staged, uncommitted updates have a quota per client too.
  for (int k = 2; k <= 3; ++k) {
    auto s = PushAll(id(bob, "bob", k), "bob", bob, delta);
    ASSERT_OK(s.status());
    EXPECT_EQ(s->state, rpc::UpdateState::STAGED);
  }
  r = channel_->Push(Request(id(bob, "bob", 4), "bob", bob, 0, frames[0]));
  EXPECT_EQ(LastCode(), "UNAVAILABLE");
  EXPECT_THAT(r.status().message(), HasSubstr("limits.staged_updates_per_client"));
  // Alice finishes one of hers: her quota, not bob's, counts it.
  auto done = PushAll(id(alice, "alice", 1), "alice", alice, delta);
  ASSERT_OK(done.status());
  EXPECT_EQ(done->state, rpc::UpdateState::STAGED);
}

TEST_F(ShardSecurityTest, StalledRequestsAreCutOffAndTheirMemoryFreed) {
  ASSERT_NO_FATAL_FAILURE(StartShard("read_timeout_ms = 5000\nmax_message_bytes = 67108864\n"));
  constexpr int kStallers = 4;
  constexpr uint32_t kClaimed = 48u << 20, kSent = 40u << 20;
  constexpr int64_t kHeld = int64_t{kStallers} * kSent;
  int64_t after_first_wave = 0;
  for (int wave = 0; wave < 2; ++wave) {
    const int64_t before = RssBytes(shard_.pid());
    ASSERT_GT(before, 0);
    std::vector<std::unique_ptr<RawConnection>> stallers;
    for (int i = 0; i < kStallers; ++i) {
      stallers.push_back(std::make_unique<RawConnection>(port_));
      ASSERT_TRUE(stallers.back()->connected());
      // Most of a request's bytes, then nothing.
      ASSERT_TRUE(stallers.back()->Send(FramePrefix(kClaimed) + std::string(kSent, '\0')));
    }
    // The attack holds memory while it lasts (the shard reads what was sent) ...
    int64_t peak = 0;
    EXPECT_TRUE(WaitFor(
        [&] {
          peak = std::max(peak, RssBytes(shard_.pid()));
          return peak >= before + kHeld * 3 / 4;
        },
        kLongWait, std::chrono::milliseconds(5)))
        << "RSS " << before << " -> " << peak;
    // ... until the read timeout cuts every staller off and frees its buffer.
    for (auto& c : stallers)
      EXPECT_TRUE(c->WaitClosed(kLongWait)) << "a stalled request was not cut off";
    int64_t after = 0;
    EXPECT_TRUE(WaitFor(
        [&] {
          after = RssBytes(shard_.pid());
          return after < peak - kHeld / 2;
        },
        kLongWait, std::chrono::milliseconds(20)))
        << "the buffers of cut-off requests were not freed: RSS " << peak << " -> " << after;
    if (wave == 0) {
      after_first_wave = after;
    } else {
      EXPECT_LT(after, after_first_wave + kHeld / 4) << "memory grows with each wave";
    }
  }
  // The shard serves on: an honest member stages.
  const int64_t alice = JoinAs("alice");
  auto staged = PushAll("alice/" + std::to_string(alice) + "/1", "alice", alice,
                        Delta(1e-3f, status_.slice_elements));
  ASSERT_OK(staged.status());
  EXPECT_EQ(staged->state, rpc::UpdateState::STAGED);
  EXPECT_THAT(testing::ReadLogTail(shard_.log_path(), 1 << 16),
              HasSubstr("limits.read_timeout_ms"));
}

TEST_F(ShardSecurityTest, SurplusConnectionsAreRefused) {
  ASSERT_NO_FATAL_FAILURE(StartShard("max_connections = 6\nidle_timeout_ms = 60000\n"));
  // The test's channel holds one of the six; six raw connections want the other five. The
  // order the shard accepts them in is the kernel's: exactly one of the six is closed.
  ASSERT_TRUE(channel_->connected());
  std::vector<std::unique_ptr<RawConnection>> raw;
  for (int i = 0; i < 6; ++i) {
    raw.push_back(std::make_unique<RawConnection>(port_));
    ASSERT_TRUE(raw.back()->connected());
  }
  auto closed = [&] {
    int n = 0;
    for (auto& c : raw) n += c->Closed() ? 1 : 0;
    return n;
  };
  int refused = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        refused += closed();
        return refused >= 1;
      },
      kLongWait, std::chrono::milliseconds(20)))
      << "no connection beyond limits.max_connections was closed";
  // A further connection is refused too, the six accepted ones stay and work.
  ShardChannel other(ShardChannelOptions{.port = port_});
  EXPECT_EQ(other.GetStatus().status().code(), StatusCode::kUnavailable);
  refused += closed();
  EXPECT_EQ(refused, 1);
  EXPECT_TRUE(channel_->GetStatus().ok());
  raw.clear();
  EXPECT_TRUE(
      WaitFor([&] { return other.GetStatus().ok(); }, kLongWait, std::chrono::milliseconds(50)));
  EXPECT_THAT(testing::ReadLogTail(shard_.log_path(), 1 << 16),
              HasSubstr("limits.max_connections"));
}

TEST_F(ShardSecurityTest, IdleConnectionsAreClosedAndAChannelReconnects) {
  ASSERT_NO_FATAL_FAILURE(StartShard("idle_timeout_ms = 500\n"));
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 8; ++i) {
    idle.push_back(std::make_unique<RawConnection>(port_));
    ASSERT_TRUE(idle.back()->connected());
  }
  for (auto& c : idle) EXPECT_TRUE(c->WaitClosed(kLongWait)) << "an idle connection was kept";
  // The channel's own connection, idle as long, was closed the same way: its next call
  // notices and reconnects.
  auto s = channel_->GetStatus();
  EXPECT_TRUE(s.ok()) << s.status().ToString();
}

TEST_F(ShardSecurityTest, OversizedRequestsAreRefusedWithAReason) {
  ASSERT_NO_FATAL_FAILURE(StartShard("max_message_bytes = 1048576\n"));
  const int64_t alice = JoinAs("alice");
  const std::string id = "alice/" + std::to_string(alice) + "/1";
  auto r = channel_->Push(Request(id, "alice", alice, 0, std::string(3 << 20, '\x11')));
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_EQ(LastCode(), "BAD_REQUEST");
  EXPECT_THAT(r.status().message(), HasSubstr("limits.max_message_bytes"));
  // The same connection goes on: the member's update stages and commits.
  EXPECT_TRUE(channel_->connected());
  auto staged = PushAll(id, "alice", alice, Delta(1e-3f, status_.slice_elements));
  ASSERT_OK(staged.status());
  EXPECT_EQ(staged->state, rpc::UpdateState::STAGED);
  ASSERT_NO_FATAL_FAILURE(CommitAndWait(id, "alice", alice, 1));
}

TEST_F(ShardSecurityTest, RequestsAboveAHundredMebibytesReachTheShardUpToTheConfiguredLimit) {
  // Thrift 0.17's sockets cut reads above 100 MiB unless configured: with a limit of
  // 256 MiB a 120 MiB request must reach the shard's own checks (its frame is junk).
  ASSERT_NO_FATAL_FAILURE(StartShard("max_message_bytes = 268435456\n"));
  const int64_t alice = JoinAs("alice");
  auto r = channel_->Push(Request("alice/" + std::to_string(alice) + "/1", "alice", alice, 0,
                                  std::string(120u << 20, '\x22')));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(LastCode() == "BAD_REQUEST" || LastCode() == "DATA_LOSS") << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("frame 0"));
}

}  // namespace
}  // namespace fedps
