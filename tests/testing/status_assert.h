// gtest assertions on fedps Status and StatusOr: ASSERT_OK / EXPECT_OK print the
// expression and the status when it is not OK.
#pragma once

#include <gtest/gtest.h>

#include "common/status.h"

namespace fedps::testing {

inline Status ToStatus(const Status& s) { return s; }
template <typename T>
Status ToStatus(const StatusOr<T>& s) {
  return s.status();
}

}  // namespace fedps::testing

#define ASSERT_OK(expr)                                           \
  do {                                                            \
    const ::fedps::Status st_ = ::fedps::testing::ToStatus(expr); \
    ASSERT_TRUE(st_.ok()) << #expr << " -> " << st_.ToString();   \
  } while (0)
#define EXPECT_OK(expr)                                           \
  do {                                                            \
    const ::fedps::Status st_ = ::fedps::testing::ToStatus(expr); \
    EXPECT_TRUE(st_.ok()) << #expr << " -> " << st_.ToString();   \
  } while (0)
