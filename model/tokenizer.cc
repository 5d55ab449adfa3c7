// Tokenizer: SentencePiece BPE with lossless settings (see tokenizer.h).
//
// Training reads the inputs itself (the same specs and readers as `prepare`),
// samples whole lines deterministically and hands them to SentencePiece through a
// SentenceIterator, so no temporary training file is needed and the model comes
// back as bytes that are written atomically.
#include "model/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <exception>
#include <numeric>
#include <unordered_map>

#include "common/env.h"
#include "common/sha256.h"
#include "model/token_data.h"

namespace fedps {
namespace {

// Texts longer than this are encoded in chunks that end after a newline.
constexpr size_t kChunkThreshold = size_t{1} << 20;
constexpr size_t kChunkTarget = size_t{256} << 10;
// SentencePiece skips training sentences (lines) longer than this.
constexpr int kMaxSentenceBytes = 16384;
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

uint64_t Mix64(uint64_t x) {
  // splitmix64's finaliser: a cheap, well-spread bijection on 64-bit words.
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// A uniform number in [0, 1) from a hash of four integers.
double UnitHash(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  uint64_t h = Mix64(a);
  h = Mix64(h ^ b);
  h = Mix64(h ^ c);
  h = Mix64(h ^ d);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

Status FromSpm(const sentencepiece::util::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  // SentencePiece prefixes messages with "file(line) [condition] "; keep the sentence.
  std::string m = s.message();
  size_t tag = m.rfind("] ");
  if (tag != std::string::npos) m = m.substr(tag + 2);
  return InvalidArgument(std::string(what) + ": " + m);
}

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>* lines) : lines_(lines) {}
  bool done() const override { return i_ >= lines_->size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return (*lines_)[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>* lines_;
  size_t i_ = 0;
};

struct TrainingInput {
  std::string spec;
  std::vector<std::string> files;
  int64_t bytes = 0;
  int64_t budget = 0;
};

// Splits `budget` over inputs so that each gets an equal share, capped at its
// size; what a small input does not use goes to the larger ones.
void AssignBudgets(std::vector<TrainingInput>& inputs, int64_t budget) {
  std::vector<size_t> order(inputs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return inputs[a].bytes < inputs[b].bytes; });
  int64_t left = budget;
  size_t remaining = inputs.size();
  for (size_t i : order) {
    int64_t share = left / static_cast<int64_t>(remaining);
    inputs[i].budget = std::min(inputs[i].bytes, share);
    left -= inputs[i].budget;
    --remaining;
  }
}

// Samples lines of the inputs within their budgets (see TokenizerTrainOptions).
StatusOr<std::vector<std::string>> SampleLines(std::vector<TrainingInput>& inputs,
                                               const TokenizerTrainOptions& options,
                                               int64_t* sampled_bytes) {
  Env* env = Env::Default();
  std::vector<std::string> lines;
  *sampled_bytes = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    TrainingInput& input = inputs[i];
    if (input.budget <= 0) continue;
    const double keep = input.bytes <= input.budget
                            ? 1.0
                            : static_cast<double>(input.budget) / static_cast<double>(input.bytes);
    int64_t used = 0;
    for (size_t f = 0; f < input.files.size() && used < input.budget; ++f) {
      ASSIGN_OR_RETURN(std::string contents, env->ReadFile(input.files[f]));
      uint64_t line_no = 0;
      Status s = ForEachDocument(input.files[f], contents, [&](std::string_view text, int64_t) -> Status {
        size_t pos = 0;
        while (pos <= text.size() && used < input.budget) {
          size_t end = text.find('\n', pos);
          if (end == std::string_view::npos) end = text.size();
          std::string_view line = text.substr(pos, end - pos);
          pos = end + 1;
          ++line_no;
          if (line.empty() || line.size() > static_cast<size_t>(kMaxSentenceBytes)) continue;
          if (keep < 1.0 && UnitHash(options.seed, i, f, line_no) >= keep) continue;
          lines.emplace_back(line);
          used += static_cast<int64_t>(line.size()) + 1;
        }
        return Status::Ok();
      });
      RETURN_IF_ERROR(s);
    }
    *sampled_bytes += used;
  }
  return lines;
}

}  // namespace

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Train(const TokenizerTrainOptions& options) {
  if (options.inputs.empty()) return InvalidArgument("tokenizer training needs at least one input");
  // 3 special ids + "\n" + 256 byte pieces come first; BPE needs room beyond them.
  if (options.vocab_size < 300 || options.vocab_size > (int64_t{1} << 30)) {
    return InvalidArgument("tokenizer vocab size " + std::to_string(options.vocab_size) +
                           " is out of range (300 .. 2^30)");
  }
  if (options.max_training_bytes <= 0) {
    return InvalidArgument("tokenizer max training bytes must be positive, got " +
                           std::to_string(options.max_training_bytes));
  }
  Env* env = Env::Default();
  std::vector<TrainingInput> inputs;
  for (const std::string& spec : options.inputs) {
    ASSIGN_OR_RETURN(InputSpec parsed, ParseInputSpec(spec));
    TrainingInput input;
    input.spec = spec;
    ASSIGN_OR_RETURN(input.files, ListInputFiles(parsed.path));
    for (const std::string& f : input.files) {
      ASSIGN_OR_RETURN(int64_t size, env->FileSize(f));
      input.bytes += size;
    }
    if (input.bytes == 0) return InvalidArgument("input " + spec + " is empty");
    inputs.push_back(std::move(input));
  }
  AssignBudgets(inputs, options.max_training_bytes);
  int64_t sampled_bytes = 0;
  ASSIGN_OR_RETURN(std::vector<std::string> lines, SampleLines(inputs, options, &sampled_bytes));
  if (lines.empty()) return InvalidArgument("the tokenizer inputs contain no text to train on");

  // The map form of the arguments: values are taken verbatim, so "\n" needs no
  // escaping (the command-line string form would split and unescape it).
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"user_defined_symbols", std::string(kNewline)},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"character_coverage", "0.9995"},
      {"max_sentence_length", std::to_string(kMaxSentenceBytes)},
      {"input_sentence_size", "0"},  // use every sampled line; we sampled already
      // BPE training does not use more threads (measured), and the count is
      // recorded in the model proto: a fixed 1 keeps the bytes, and so the
      // sha256, independent of the machine.
      {"num_threads", "1"},
      {"minloglevel", "2"},  // SentencePiece's own INFO and WARNING lines are noise here
      {"model_prefix", ""},
  };
  LOG(INFO) << "training a " << options.vocab_size << "-piece BPE tokenizer on "
            << static_cast<double>(sampled_bytes) / 1e6 << " MB sampled from " << inputs.size() << " input(s)";
  std::string model_bytes;
  VectorIterator it(&lines);
  // BPE on an already sampled input draws no random numbers, but seed
  // SentencePiece's generator anyway so that no code path depends on the clock
  // (~0u is its "seed from random_device" marker).
  uint32_t spm_seed = static_cast<uint32_t>(Mix64(options.seed));
  sentencepiece::SetRandomGeneratorSeed(spm_seed == ~0u ? 0u : spm_seed);
  try {
    RETURN_IF_ERROR(FromSpm(sentencepiece::SentencePieceTrainer::Train(args, &it, &model_bytes),
                            "training the tokenizer on " + std::to_string(sampled_bytes) + " bytes"));
  } catch (const std::exception& e) {
    return Internal(std::string("training the tokenizer: ") + e.what());
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   FromSerialized(std::move(model_bytes), options.output_path));
  if (tokenizer->vocab_size() != options.vocab_size) {
    return Internal("trained tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                    " pieces, asked for " + std::to_string(options.vocab_size));
  }
  if (!options.output_path.empty()) RETURN_IF_ERROR(tokenizer->Save(options.output_path));
  return tokenizer;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_path) {
  StatusOr<std::string> bytes = Env::Default()->ReadFile(model_path);
  if (!bytes.ok()) return bytes.status().WithContext("loading tokenizer");
  return FromSerialized(std::move(bytes).value(), model_path);
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSerialized(std::string model_bytes, std::string path) {
  const std::string what = path.empty() ? std::string("tokenizer") : "tokenizer " + path;
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  try {
    RETURN_IF_ERROR(FromSpm(t->sp_->LoadFromSerializedProto(model_bytes),
                            what + " is not a SentencePiece model"));
  } catch (const std::exception& e) {
    return InvalidArgument(what + " is not a SentencePiece model: " + e.what());
  }
  if (t->sp_->eos_id() < 0) return InvalidArgument(what + " has no </s> id (token data needs one)");
  t->sha256_ = Sha256Hex(model_bytes);
  t->bytes_ = std::move(model_bytes);
  t->path_ = std::move(path);
  // Chunked encoding is exact only if "\n" is its own symbol and nothing is
  // prepended to each chunk (a dummy prefix would show up as an extra piece).
  std::vector<int> ids;
  const int newline_id = t->sp_->PieceToId(kNewline);
  t->newline_splittable_ = newline_id != t->sp_->unk_id() &&
                           t->sp_->Encode(kNewline, &ids).ok() && ids.size() == 1 &&
                           ids[0] == newline_id;
  return t;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> out;
  std::vector<int> ids;
  auto encode = [&](std::string_view piece) {
    ids.clear();
    sentencepiece::util::Status s = sp_->Encode(piece, &ids);
    // Encode fails only without a loaded model, which FromSerialized rules out.
    if (!s.ok()) LOG(ERROR) << "SentencePiece Encode failed: " << s.ToString();
    out.insert(out.end(), ids.begin(), ids.end());
  };
  if (text.size() <= kChunkThreshold || !newline_splittable_) {
    encode(text);
    return out;
  }
  out.reserve(text.size() / 3);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.size();
    if (text.size() - pos > kChunkTarget) {
      size_t nl = text.find('\n', pos + kChunkTarget);
      if (nl != std::string_view::npos) end = nl + 1;
    }
    encode(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  std::vector<int> run;
  const int32_t size = static_cast<int32_t>(sp_->GetPieceSize());
  auto flush = [&] {
    if (run.empty()) return;
    std::string text;
    sentencepiece::util::Status s = sp_->Decode(run, &text);
    if (!s.ok()) {
      LOG(WARNING) << "SentencePiece Decode failed: " << s.ToString();
      text = kReplacementChar;
    }
    out += text;
    run.clear();
  };
  for (int32_t id : ids) {
    if (id >= 0 && id < size) {
      run.push_back(id);
    } else {
      flush();
      out += kReplacementChar;
    }
  }
  flush();
  return out;
}

int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int32_t Tokenizer::unk_id() const { return sp_->unk_id(); }

std::string Tokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= sp_->GetPieceSize()) return "";
  return sp_->IdToPiece(id);
}

Status Tokenizer::Save(const std::string& path) const {
  if (path.empty()) return InvalidArgument("tokenizer output path is empty");
  std::string dir = Dirname(path);
  RETURN_IF_ERROR(Env::Default()->CreateDirs(dir));
  Status s = Env::Default()->WriteFileAtomic(path, bytes_);
  return s.ok() ? s : s.WithContext("saving tokenizer");
}

}  // namespace fedps
