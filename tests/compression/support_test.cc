// Hash64 (XXH3-64) and ThreadPool: the pieces under the codec.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "compression/hash64.h"
#include "compression/thread_pool.h"

namespace fedps {
namespace {

// Values from Python's xxhash package (xxhash.xxh3_64_intdigest; xxHash 0.8.4), the
// third-party check docs/compression.md gives: Hash64 is XXH3-64 with seed 0.
TEST(Hash64Test, IsXxh3With64BitsAndSeedZero) {
  EXPECT_EQ(Hash64(""), 0x2D06800538D394C2ull);
  EXPECT_EQ(Hash64("pseudo-gradient"), 0x5B62E954143FD279ull);
  std::string bytes;
  for (int i = 0; i < 1024; ++i) bytes.push_back(static_cast<char>(i % 256));  // XXH3's long-input path
  EXPECT_EQ(Hash64(bytes), 0xA870F92984398D22ull);
}

TEST(Hash64Test, PartsHashAsTheirConcatenation) {
  std::string bytes;
  for (int i = 0; i < 1024; ++i) bytes.push_back(static_cast<char>(i % 256));
  const std::string_view v = bytes;
  EXPECT_EQ(Hash64({v.substr(0, 56), v.substr(56)}), 0xA870F92984398D22ull);
  EXPECT_EQ(Hash64({v.substr(0, 1), v.substr(1, 700), v.substr(701)}), Hash64(bytes));
  EXPECT_EQ(Hash64({std::string_view(), "pseudo-", "gradient"}), 0x5B62E954143FD279ull);
  EXPECT_EQ(Hash64({}), Hash64(""));
}

TEST(Hash64Test, EverySingleBitFlipChangesTheHash) {
  std::mt19937_64 rng(3);
  for (size_t len : {1, 7, 8, 31, 32, 33, 100, 257}) {
    std::string s(len, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    const uint64_t h = Hash64(s);
    std::set<uint64_t> seen = {h};
    for (size_t i = 0; i < len; ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        std::string t = s;
        t[i] ^= static_cast<char>(1 << bit);
        EXPECT_TRUE(seen.insert(Hash64(t)).second) << "len " << len << " byte " << i;
      }
    }
  }
}

TEST(ThreadPoolTest, RunsEveryIndexOnce) {
  for (int parallelism : {1, 2, 4}) {
    ThreadPool pool(parallelism);
    EXPECT_EQ(pool.parallelism(), parallelism);
    for (size_t n : {0, 1, 3, 1000}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, [&](size_t i) { hits[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1);
    }
  }
}

TEST(ThreadPoolTest, ConcurrentCallersShareThePool) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 50; ++round) {
        pool.ParallelFor(37, [&](size_t i) { total.fetch_add(static_cast<int64_t>(i)); });
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(total.load(), int64_t{4} * 50 * (36 * 37 / 2));
}

}  // namespace
}  // namespace fedps
