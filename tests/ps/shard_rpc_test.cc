// ps/shard.thrift: the generated code builds, links and carries requests, binary frames,
// optional fields and declared errors through a client and a processor (in memory, no
// sockets), under fedps' warning flags.
#include <gtest/gtest.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TBufferTransports.h>

#include <memory>
#include <string>

#include "ps/rpc/Shard.h"
#include "ps/rpc/shard_constants.h"

namespace fedps::rpc {
namespace {

using apache::thrift::protocol::TCompactProtocol;
using apache::thrift::transport::TMemoryBuffer;

// Answers push with what it received; refuses stale updates like a real shard would.
class FakeShard : public ShardNull {
 public:
  void push(PushResponse& response, const PushRequest& request) override {
    if (request.base_version < 10) {
      ShardError error;
      error.code = ErrorCode::STALE_REFUSED;
      error.message = "staleness 37 > max 32: pull and retrain";
      error.__set_version(47);
      throw error;
    }
    last = request;
    response.state = UpdateState::STAGED;
    response.frames_received = request.total_frames;
    response.total_frames = request.total_frames;
    response.version = 12;
    response.__set_stage_ttl_ms(60000);
  }
  PushRequest last;
};

class ShardRpc : public ::testing::Test {
 protected:
  // One call: the client writes the request, the processor answers, the client reads.
  template <typename Send, typename Recv>
  void Call(Send send, Recv recv) {
    send();
    ASSERT_TRUE(processor_.process(std::make_shared<TCompactProtocol>(to_server_),
                                   std::make_shared<TCompactProtocol>(to_client_), nullptr));
    recv();
  }

  std::shared_ptr<FakeShard> shard_ = std::make_shared<FakeShard>();
  ShardProcessor processor_{shard_};
  std::shared_ptr<TMemoryBuffer> to_server_ = std::make_shared<TMemoryBuffer>();
  std::shared_ptr<TMemoryBuffer> to_client_ = std::make_shared<TMemoryBuffer>();
  ShardClient client_{std::make_shared<TCompactProtocol>(to_client_),
                      std::make_shared<TCompactProtocol>(to_server_)};
};

TEST_F(ShardRpc, PushCarriesFramesAndOptionalFields) {
  EXPECT_EQ(g_shard_constants.PROTOCOL_VERSION, 1);
  PushRequest request;
  request.header.run_id = "run";
  request.header.layout_hash = std::string(64, 'a');
  request.header.shard_index = 3;
  request.header.shard_epoch = 2;
  request.update_id = "client-7/1/42";
  request.base_version = 11;
  request.tokens = 1 << 20;
  request.codec = "bf16+zstd";
  request.frame_index = 0;
  request.total_frames = 1;
  request.frame_elements = 1 << 20;
  request.frame.resize(4 << 20);
  for (size_t i = 0; i < request.frame.size(); ++i) request.frame[i] = static_cast<char>(i * 131);

  PushResponse response;
  Call([&] { client_.send_push(request); }, [&] { client_.recv_push(response); });
  EXPECT_TRUE(shard_->last == request);
  EXPECT_EQ(response.state, UpdateState::STAGED);
  EXPECT_EQ(response.version, 12);
  EXPECT_TRUE(response.__isset.stage_ttl_ms);
  EXPECT_EQ(response.stage_ttl_ms, 60000);
  EXPECT_FALSE(response.__isset.seq);
  EXPECT_FALSE(response.__isset.missing_frames);
}

TEST_F(ShardRpc, DeclaredErrorsReachTheClientWithTheirCode) {
  PushRequest request;
  request.base_version = 3;
  PushResponse response;
  try {
    Call([&] { client_.send_push(request); }, [&] { client_.recv_push(response); });
    FAIL() << "no ShardError";
  } catch (const ShardError& error) {
    EXPECT_EQ(error.code, ErrorCode::STALE_REFUSED);
    EXPECT_EQ(error.message, "staleness 37 > max 32: pull and retrain");
    EXPECT_TRUE(error.__isset.version);
    EXPECT_EQ(error.version, 47);
    EXPECT_FALSE(error.__isset.retry_after_ms);
  }
}

}  // namespace
}  // namespace fedps::rpc
