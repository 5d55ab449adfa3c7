#include "tests/testing/pseudo_words.h"

namespace fedps::testing {

std::string PseudoWordLines(uint64_t seed, int lines) {
  const char* letters = "etaoinshrdlucmfwypvbgkqjxz";  // by English frequency
  std::string text;
  uint64_t x = seed;
  auto next = [&x] { return x = x * 6364136223846793005ULL + 1442695040888963407ULL; };
  for (int line = 0; line < lines; ++line) {
    for (int w = 0; w < 12; ++w) {
      const int len = 2 + static_cast<int>((next() >> 33) % 7);
      for (int c = 0; c < len; ++c) text += letters[(next() >> 35) % (c == 0 ? 10 : 26)];
      text += ' ';
    }
    text += '\n';
  }
  return text;
}

}  // namespace fedps::testing
