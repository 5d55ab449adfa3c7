// Base64 (common/base64.h): RFC 4648's test vectors, both ways.
#include "common/base64.h"

#include <gtest/gtest.h>

#include <string>

namespace fedps {
namespace {

TEST(Base64Test, EncodesRfc4648Vectors) {
  EXPECT_EQ(Base64Encode(""), "");
  EXPECT_EQ(Base64Encode("f"), "Zg==");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  EXPECT_EQ(Base64Encode("foob"), "Zm9vYg==");
  EXPECT_EQ(Base64Encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64Encode(std::string("\x89PNG\r\n\x1a\n", 8)), "iVBORw0KGgo=");
}

TEST(Base64Test, DecodesWhatItEncodes) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    auto back = Base64Decode(Base64Encode(s));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, s);
  }
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  EXPECT_EQ(*Base64Decode(Base64Encode(all)), all);
}

TEST(Base64Test, RefusesWhatIsNotBase64) {
  EXPECT_EQ(Base64Decode("Zg=").status().code(), StatusCode::kInvalidArgument);  // not whole groups
  EXPECT_EQ(Base64Decode("Zm9*").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Base64Decode(" Zm9").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Base64Decode("Zm9v\n").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedps
