// Hugging Face export: see hf_export.h.
#include "model/hf_export.h"

#include <unistd.h>

#include <map>
#include <optional>
#include <string_view>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "common/env.h"
#include "common/safetensors.h"

namespace fedps {
namespace {

using ojson = nlohmann::ordered_json;

// ---- a minimal protobuf wire-format reader (for SentencePiece's ModelProto) -------------

class PbReader {
 public:
  explicit PbReader(std::string_view data) : d_(data) {}
  bool done() const { return pos_ >= d_.size(); }
  // The next field; false when the bytes are malformed. Varint and fixed32 values land in
  // *num (fixed32 as its raw bits), length-delimited ones in *bytes.
  bool Next(uint32_t* field, uint32_t* wire, uint64_t* num, std::string_view* bytes) {
    uint64_t key = 0;
    if (!Varint(&key)) return false;
    *field = static_cast<uint32_t>(key >> 3);
    *wire = static_cast<uint32_t>(key & 7);
    switch (*wire) {
      case 0:
        return Varint(num);
      case 1:
        if (d_.size() - pos_ < 8) return false;
        pos_ += 8;
        return true;
      case 2: {
        uint64_t len = 0;
        if (!Varint(&len) || len > d_.size() - pos_) return false;
        *bytes = d_.substr(pos_, static_cast<size_t>(len));
        pos_ += static_cast<size_t>(len);
        return true;
      }
      case 5: {
        if (d_.size() - pos_ < 4) return false;
        uint32_t v = 0;
        for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(d_[pos_ + static_cast<size_t>(i)]);
        *num = v;
        pos_ += 4;
        return true;
      }
      default:
        return false;  // groups are not used by SentencePiece
    }
  }

 private:
  bool Varint(uint64_t* out) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= d_.size()) return false;
      const unsigned char b = static_cast<unsigned char>(d_[pos_++]);
      r |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (b < 0x80) {
        *out = r;
        return true;
      }
    }
    return false;
  }

  std::string_view d_;
  size_t pos_ = 0;
};

// SentencePiece's ModelProto, the fields the conversion needs (numbers and defaults from
// sentencepiece_model.proto).
struct SpmModel {
  enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  struct Piece {
    std::string piece;
    int type = kNormal;
  };
  std::vector<Piece> pieces;
  int model_type = 1;  // 1 unigram, 2 BPE, 3 word, 4 char
  bool byte_fallback = false;
  int64_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string normalizer_name;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

StatusOr<SpmModel> ParseSpm(std::string_view bytes) {
  const Status bad = InvalidArgument("not a SentencePiece model (malformed protobuf)");
  SpmModel m;
  PbReader top(bytes);
  while (!top.done()) {
    uint32_t f = 0, w = 0;
    uint64_t num = 0;
    std::string_view sub;
    if (!top.Next(&f, &w, &num, &sub)) return bad;
    if (w != 2) continue;
    PbReader r(sub);
    uint32_t g = 0, gw = 0;
    uint64_t v = 0;
    std::string_view s;
    if (f == 1) {  // pieces
      SpmModel::Piece p;
      while (!r.done()) {
        if (!r.Next(&g, &gw, &v, &s)) return bad;
        if (g == 1 && gw == 2) p.piece = std::string(s);
        if (g == 3 && gw == 0) p.type = static_cast<int>(v);
      }
      m.pieces.push_back(std::move(p));
    } else if (f == 2) {  // trainer_spec
      while (!r.done()) {
        if (!r.Next(&g, &gw, &v, &s)) return bad;
        if (gw != 0) continue;
        const int64_t iv = static_cast<int32_t>(static_cast<int64_t>(v));  // int32 fields, sign-extended
        if (g == 3) m.model_type = static_cast<int>(v);
        if (g == 35) m.byte_fallback = v != 0;
        if (g == 40) m.unk_id = iv;
        if (g == 41) m.bos_id = iv;
        if (g == 42) m.eos_id = iv;
        if (g == 43) m.pad_id = iv;
      }
    } else if (f == 3) {  // normalizer_spec
      while (!r.done()) {
        if (!r.Next(&g, &gw, &v, &s)) return bad;
        if (g == 1 && gw == 2) m.normalizer_name = std::string(s);
        if (g == 3 && gw == 0) m.add_dummy_prefix = v != 0;
        if (g == 4 && gw == 0) m.remove_extra_whitespaces = v != 0;
        if (g == 5 && gw == 0) m.escape_whitespaces = v != 0;
      }
    }
  }
  if (m.pieces.empty()) return InvalidArgument("not a SentencePiece model (no pieces)");
  return m;
}

// Byte offsets of the UTF-8 code point boundaries inside `s` (excluding 0 and size).
std::vector<size_t> CodePointSplits(const std::string& s) {
  std::vector<size_t> out;
  for (size_t i = 1; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) out.push_back(i);
  }
  return out;
}

const char* kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace marker

ojson AddedToken(int64_t id, const std::string& content, bool special) {
  return ojson{{"id", id},           {"content", content}, {"single_word", false}, {"lstrip", false},
               {"rstrip", false},    {"normalized", false}, {"special", special}};
}

std::string Dump(const ojson& j) { return j.dump(2, ' ', /*ensure_ascii=*/false) + "\n"; }

}  // namespace

StatusOr<HfTokenizerFiles> ConvertSentencePieceForHf(const std::string& model_bytes, int64_t max_length) {
  ASSIGN_OR_RETURN(SpmModel m, ParseSpm(model_bytes));
  if (m.model_type != 2)
    return Unimplemented("Hugging Face export supports BPE SentencePiece models only (model_type " +
                         std::to_string(m.model_type) + ")");
  const int64_t n = static_cast<int64_t>(m.pieces.size());
  auto piece_or_empty = [&](int64_t id) { return id >= 0 && id < n ? m.pieces[static_cast<size_t>(id)].piece : ""; };
  if (m.unk_id < 0 || m.unk_id >= n) return InvalidArgument("SentencePiece model has no valid unk id");

  std::unordered_map<std::string, int64_t> ids;
  ojson vocab = ojson::object();
  ojson added = ojson::array();
  for (int64_t i = 0; i < n; ++i) {
    const auto& p = m.pieces[static_cast<size_t>(i)];
    if (!ids.emplace(p.piece, i).second) return InvalidArgument("SentencePiece model repeats piece " + p.piece);
    vocab[p.piece] = i;
    if (p.type == SpmModel::kControl || p.type == SpmModel::kUnknown || p.type == SpmModel::kUserDefined)
      added.push_back(AddedToken(i, p.piece, p.type != SpmModel::kUserDefined));
  }
  // Merges as transformers derives them from a SentencePiece BPE vocabulary: for each piece
  // in id order (its rank), every split into two pieces of the vocabulary, shorter left
  // part first. Only ordinary pieces take part: control, byte and user-defined pieces are
  // never produced by SentencePiece's merges, and a merge yielding "<s>" from text would
  // differ from it.
  auto normal = [&](const std::string& s) {
    auto it = ids.find(s);
    return it != ids.end() && m.pieces[static_cast<size_t>(it->second)].type == SpmModel::kNormal;
  };
  ojson merges = ojson::array();
  for (const auto& p : m.pieces) {
    if (p.type != SpmModel::kNormal) continue;
    for (size_t cut : CodePointSplits(p.piece)) {
      std::string l = p.piece.substr(0, cut), r = p.piece.substr(cut);
      if (normal(l) && normal(r)) merges.push_back(ojson::array({std::move(l), std::move(r)}));
    }
  }

  ojson normalizers = ojson::array();
  const bool nfkc = m.normalizer_name.find("nfkc") != std::string::npos;
  if (nfkc) normalizers.push_back({{"type", "NFKC"}});
  if (m.remove_extra_whitespaces) {
    normalizers.push_back({{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}});
    normalizers.push_back({{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", " "}});
  }
  if (m.add_dummy_prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", kSpace}});
  if (m.escape_whitespaces)
    normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}});

  ojson decoders = ojson::array();
  if (m.escape_whitespaces)
    decoders.push_back({{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}});
  decoders.push_back({{"type", "ByteFallback"}});
  decoders.push_back({{"type", "Fuse"}});
  if (m.add_dummy_prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});

  // No post-processor and add_bos_token false: fedps trains and generates without <s>
  // (token data puts </s> between documents; Tokenizer::Encode adds nothing), so
  // tokenizer(text) with transformers' defaults must give Tokenizer::Encode's ids.
  const std::string bos = piece_or_empty(m.bos_id), eos = piece_or_empty(m.eos_id);

  ojson tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", normalizers.empty() ? ojson(nullptr) : ojson{{"type", "Sequence"}, {"normalizers", normalizers}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", m.pieces[static_cast<size_t>(m.unk_id)].piece},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", m.byte_fallback},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}}};

  // PreTrainedTokenizerFast (TokenizersBackend in transformers 5) loads tokenizer.json as
  // written; LlamaTokenizer would rebuild the normaliser (see the header).
  ojson cfg = {{"tokenizer_class", "PreTrainedTokenizerFast"},
               {"backend", "tokenizers"},
               {"add_bos_token", false},
               {"add_eos_token", false},
               {"clean_up_tokenization_spaces", false},
               {"model_max_length", max_length}};
  cfg["unk_token"] = m.pieces[static_cast<size_t>(m.unk_id)].piece;
  if (!bos.empty()) cfg["bos_token"] = bos;
  if (!eos.empty()) cfg["eos_token"] = eos;
  if (!piece_or_empty(m.pad_id).empty()) cfg["pad_token"] = piece_or_empty(m.pad_id);

  HfTokenizerFiles out;
  try {
    out.tokenizer_json = Dump(tok);
    out.tokenizer_config_json = Dump(cfg);
  } catch (const std::exception& e) {  // e.g. a piece that is not valid UTF-8
    return InvalidArgument(std::string("cannot convert the SentencePiece model: ") + e.what());
  }
  out.vocab_size = n;
  out.unk_id = m.unk_id;
  out.bos_id = bos.empty() ? -1 : m.bos_id;
  out.eos_id = eos.empty() ? -1 : m.eos_id;
  out.pad_id = piece_or_empty(m.pad_id).empty() ? -1 : m.pad_id;
  return out;
}

std::string HfConfigJson(const ModelConfig& c, int64_t bos_id, int64_t eos_id) {
  auto id_or_null = [](int64_t id) { return id >= 0 ? ojson(id) : ojson(nullptr); };
  ojson j = {{"architectures", ojson::array({"LlamaForCausalLM"})},
             {"model_type", "llama"},
             {"vocab_size", c.vocab_size},
             {"hidden_size", c.d_model},
             {"intermediate_size", c.ffn_hidden},
             {"num_hidden_layers", c.n_layers},
             {"num_attention_heads", c.n_heads},
             {"num_key_value_heads", c.n_kv_heads},
             {"head_dim", c.head_dim()},
             {"hidden_act", "silu"},
             {"max_position_embeddings", c.max_seq_len},
             {"rms_norm_eps", c.norm_eps},
             // transformers 5 reads rope_parameters; 4.x reads rope_theta.
             {"rope_theta", c.rope_theta},
             {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", c.rope_theta}}},
             {"attention_bias", false},
             {"attention_dropout", 0.0},
             {"mlp_bias", false},
             {"initializer_range", c.init_std},
             {"pretraining_tp", 1},
             {"tie_word_embeddings", c.tie_embeddings},
             {"use_cache", true},
             {"bos_token_id", id_or_null(bos_id)},
             {"eos_token_id", id_or_null(eos_id)},
             {"pad_token_id", nullptr},
             {"dtype", "float32"},          // transformers 5
             {"torch_dtype", "float32"}};  // transformers 4
  return Dump(j);
}

Status ExportHuggingFace(Model& model, const std::string& tokenizer_model_path, const std::string& out_dir,
                         bool overwrite) {
  Env* env = Env::Default();
  std::string dir = out_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (dir.empty()) return InvalidArgument("export: empty output folder");
  if (env->Exists(dir)) {
    if (!env->IsDirectory(dir)) return InvalidArgument("export: " + dir + " exists and is not a folder");
    ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
    if (!names.empty() && !overwrite)
      return AlreadyExists("export: " + dir + " exists and is not empty (pass overwrite to replace it)");
  }
  const ModelConfig& c = model.config();

  // The tokenizer first: a bad tokenizer fails before anything is written.
  std::optional<HfTokenizerFiles> tok;
  std::string tok_bytes;
  if (!tokenizer_model_path.empty()) {
    ASSIGN_OR_RETURN(tok_bytes, env->ReadFile(tokenizer_model_path));
    auto converted = ConvertSentencePieceForHf(tok_bytes, c.max_seq_len);
    if (!converted.ok()) return converted.status().WithContext("export: " + tokenizer_model_path);
    tok = std::move(converted).value();
    if (tok->vocab_size > c.vocab_size)
      return InvalidArgument("export: tokenizer has " + std::to_string(tok->vocab_size) +
                             " pieces but the model's vocabulary is " + std::to_string(c.vocab_size));
  }
  const int64_t bos = tok ? tok->bos_id : 1, eos = tok ? tok->eos_id : 2;

  torch::Tensor flat;
  try {
    flat = model.flat_params().detach().to(torch::kCPU).contiguous();
  } catch (const std::exception& e) {
    return Internal(std::string("export: cannot copy the parameters: ") + e.what());
  }
  std::vector<std::pair<std::string, TensorRef>> refs;
  const float* base = flat.data_ptr<float>();
  for (const ParamEntry& e : model.layout().entries()) {
    TensorRef r;
    r.dtype = DType::kF32;
    r.shape = e.shape;
    r.data = base + e.offset;
    r.bytes = static_cast<size_t>(e.numel) * sizeof(float);
    refs.emplace_back(e.name, std::move(r));
  }
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},  // transformers refuses safetensors files without it
      {"fedps_model_config", c.ToJson().dump()},
      {"fedps_layout_hash", model.layout().hash()}};

  const std::string suffix = std::to_string(::getpid());
  const std::string tmp = dir + ".tmp-export-" + suffix;
  RETURN_IF_ERROR(env->RemoveAll(tmp));
  RETURN_IF_ERROR(env->CreateDirs(tmp));
  auto write_all = [&]() -> Status {
    RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(tmp, "config.json"), HfConfigJson(c, bos, eos)));
    ojson gen = {{"_from_model_config", true}};
    if (bos >= 0) gen["bos_token_id"] = bos;
    if (eos >= 0) gen["eos_token_id"] = eos;
    RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(tmp, "generation_config.json"), Dump(gen)));
    RETURN_IF_ERROR(WriteSafetensors(JoinPath(tmp, "model.safetensors"), refs, metadata, env));
    if (tok) {
      RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(tmp, "tokenizer.model"), tok_bytes));
      RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(tmp, "tokenizer.json"), tok->tokenizer_json));
      RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(tmp, "tokenizer_config.json"), tok->tokenizer_config_json));
    }
    return Status::Ok();
  };
  Status s = write_all();
  if (s.ok()) {
    if (env->Exists(dir)) {
      // Move the old folder aside first: rename cannot replace a non-empty folder.
      const std::string old = dir + ".old-export-" + suffix;
      s = env->RemoveAll(old);
      if (s.ok()) s = env->Rename(dir, old);
      if (s.ok()) {
        s = env->Rename(tmp, dir);
        if (s.ok()) {
          env->RemoveAll(old).IgnoreError();
        } else {
          env->Rename(old, dir).IgnoreError();  // put the previous export back
        }
      }
    } else {
      s = env->Rename(tmp, dir);
    }
  }
  if (!s.ok()) {
    env->RemoveAll(tmp).IgnoreError();
    return s.WithContext("export to " + dir);
  }
  return Status::Ok();
}

}  // namespace fedps
