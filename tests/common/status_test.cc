#include "common/status.h"

#include <gtest/gtest.h>

namespace fedps {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("odd: " + std::to_string(x));
  return x / 2;
}

Status UseHalf(int x, int* out) {
  ASSIGN_OR_RETURN(*out, Half(x));
  RETURN_IF_ERROR(Status::Ok());
  return Status::Ok();
}

TEST(StatusTest, CodesMessagesAndRetryable) {
  EXPECT_TRUE(Status::Ok().ok());
  Status s = Unavailable("shard 1 down");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.retryable());
  EXPECT_FALSE(DataLoss("bad checksum").retryable());
  EXPECT_EQ(s.ToString(), "UNAVAILABLE: shard 1 down");
  EXPECT_EQ(s.WithContext("pull").message(), "pull: shard 1 down");
}

TEST(StatusTest, MacrosPropagate) {
  int out = 0;
  EXPECT_TRUE(UseHalf(8, &out).ok());
  EXPECT_EQ(out, 4);
  Status s = UseHalf(7, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "odd: 7");
}

}  // namespace
}  // namespace fedps
