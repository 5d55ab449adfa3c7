// Pseudo-word text for tests that need a tokenizer or token data but not meaning: lines
// of 12 words of 2-8 letters, drawn by a fixed linear congruential generator from
// `seed`, so the same call always gives the same text (and the same tokenizer).
#pragma once

#include <cstdint>
#include <string>

namespace fedps::testing {

// `lines` lines, each 12 words and a space after each, ending in '\n'.
std::string PseudoWordLines(uint64_t seed, int lines);

}  // namespace fedps::testing
