// Hugging Face export: files and their contents, the no-half-export / overwrite rules, the
// tokenizer conversion's errors, and the end-to-end checks, by running
// tests/model/hf_export_check.py with $FEDPS_PYTHON: transformers' LlamaForCausalLM
// reproduces fedps's logits (and AutoTokenizer SentencePiece's ids), and with transformers'
// defaults tokenizer(text) gives fedps's ids and generate() / pipeline("text-generation")
// with do_sample=False the ids and text of `fedps-ctl generate` (greedy by default).
#include "model/hf_export.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sentencepiece_trainer.h>

#include "common/env.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "tests/testing/ctl.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

// Trains a small BPE SentencePiece model the way fedps's tokenizer is configured (identity
// normalisation, whitespace kept, byte fallback) and returns its path.
std::string TrainTokenizer(const testing::ScopedTempDir& dir) {
  std::string corpus;
  for (int i = 0; i < 300; ++i) {
    corpus += "def f" + std::to_string(i % 17) + "(x):\n    return x * " + std::to_string(i) + "\n";
    corpus += "The quick brown fox jumps over the lazy dog.  Twice  spaced; naïve café résumé.\n";
    corpus += "Und dann sagte er: »Guten Tag!« — und ging.\n";
  }
  std::ofstream(dir.File("corpus.txt")) << corpus;
  const std::string prefix = dir.File("tok");
  auto s = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + dir.File("corpus.txt") + " --model_prefix=" + prefix +
      " --vocab_size=400 --model_type=bpe --normalization_rule_name=identity --remove_extra_whitespaces=false"
      " --byte_fallback=true --character_coverage=1.0 --hard_vocab_limit=false --minloglevel=2");
  EXPECT_TRUE(s.ok()) << s.ToString();
  return prefix + ".model";
}

std::unique_ptr<Model> MakeModel(const ModelConfig& c, uint64_t seed) {
  auto m = Model::Create(c, torch::kCPU, seed);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (!m.ok()) return nullptr;
  // Norm gains away from 1 so a misplaced norm weight shows in the logits.
  torch::NoGradGuard g;
  const ParamLayout& l = (*m)->layout();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 100);
  (*m)->flat_params().narrow(0, l.decay_numel(), l.total_numel() - l.decay_numel()).uniform_(0.5, 1.5, gen);
  return std::move(m).value();
}

ModelConfig Custom(const std::string& preset, int64_t vocab, int64_t d, int64_t layers, int64_t heads,
                   int64_t kv, int tied, double theta, double eps) {
  ModelOptions o;
  o.preset = preset;
  o.vocab_size = vocab;
  o.d_model = d;
  o.n_layers = layers;
  o.n_heads = heads;
  o.n_kv_heads = kv;
  o.tie_embeddings = tied;
  o.rope_theta = theta;
  o.norm_eps = eps;
  o.init_std = 0.1;  // larger than training's 0.02 so the logits spread out and differences show
  auto c = ResolveModelConfig(o, 0);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return *c;
}

TEST(HfExportTest, MatchesTransformers) {
  const char* py = std::getenv("FEDPS_PYTHON");
  if (py == nullptr || *py == '\0') GTEST_SKIP() << "FEDPS_PYTHON not set (run through ctest)";
  testing::ScopedTempDir dir;
  const std::string tok = TrainTokenizer(dir);
  struct Case {
    std::string name;
    ModelConfig config;
    bool tokenizer;
  };
  const Case cases[] = {
      // tiny preset: GQA (4 heads, 2 kv), tied embeddings, with the tokenizer.
      {"tiny_gqa_tied", Custom("tiny", 448, 0, 0, 0, 0, -1, 0, 0), true},
      // GQA 8 heads / 2 kv, untied, other rope theta and eps.
      {"gqa_untied", Custom("tiny", 512, 128, 3, 8, 2, 0, 500000.0, 1e-6), false},
      // Multi-head attention, untied.
      {"mha_untied", Custom("tiny", 320, 64, 2, 4, 4, 0, 10000.0, 1e-5), false},
  };
  std::string args;
  for (const Case& k : cases) {
    auto m = MakeModel(k.config, 42);
    ASSERT_TRUE(m);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    torch::Tensor tokens = torch::randint(k.config.vocab_size, {2, 37}, gen, torch::kLong);
    torch::Tensor logits;
    {
      torch::NoGradGuard g;
      m->SetTraining(false);
      logits = m->Forward(tokens);
    }
    const std::string out = dir.File(k.name + "/hf"), ref = dir.File(k.name + "/reference.safetensors");
    Status s = ExportHuggingFace(*m, k.tokenizer ? tok : "", out, false);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_TRUE(SaveTensors(ref, {{"tokens", tokens}, {"logits", logits}}).ok());
    args += " " + out + " " + ref;
  }
  std::string output;
  const std::string cmd =
      std::string(py) + " " + testing::SourceDir() + "/tests/model/hf_export_check.py" + args + " 2>&1";
  const int rc = testing::RunShellCapturing(cmd, &output);
  std::printf("%s", output.c_str());
  if (rc == 77) GTEST_SKIP() << "python check skipped: " << output;
  EXPECT_EQ(rc, 0) << cmd << "\n" << output;
}

std::string Corpus() {
  std::string corpus;
  for (int i = 0; i < 300; ++i) {
    corpus += "def f" + std::to_string(i % 17) + "(x):\n    return x * " + std::to_string(i) + "\n";
    corpus += "The quick brown fox jumps over the lazy dog.  Twice  spaced; naïve café résumé.\n";
    corpus += "Und dann sagte er: »Guten Tag!« — und ging.\n";
  }
  return corpus;
}

// A user's path: a fedps tokenizer (Tokenizer::Train, as `fedps-ctl tokenizer train`), a
// checkpoint, `fedps-ctl export` and `fedps-ctl generate` with their defaults; then
// transformers must give the same ids (tokenizer(text), generate()) and greedy text
// (pipeline with do_sample=False: the pipeline itself samples by default).
TEST(HfExportTest, TransformersDefaultsReproduceFedps) {
  const char* py = std::getenv("FEDPS_PYTHON");
  if (py == nullptr || *py == '\0') GTEST_SKIP() << "FEDPS_PYTHON not set (run through ctest)";
  testing::ScopedTempDir dir;
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(dir.File("corpus.txt"), Corpus()).ok());
  TokenizerTrainOptions topt;
  topt.inputs = {dir.File("corpus.txt")};
  topt.vocab_size = 400;
  topt.output_path = dir.File("tokenizer.model");
  auto tok = Tokenizer::Train(topt);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  // The model's vocabulary is the tokenizer's, so every id a random model picks is a piece.
  auto m = MakeModel(Custom("tiny", (*tok)->vocab_size(), 0, 0, 0, 0, -1, 0, 0), 11);
  ASSERT_TRUE(m);
  CheckpointSaveOptions copt;
  copt.tokenizer_path = topt.output_path;
  copt.tokenizer_sha256 = (*tok)->sha256();
  ASSERT_TRUE(SaveCheckpoint(dir.File("checkpoints"), *m, copt).ok());

  const std::string ctl = testing::BinPath("fedps-ctl");
  auto run = [&](std::vector<std::string> argv, const std::string& log) {
    argv.insert(argv.begin(), ctl);
    auto st = testing::RunLogged(argv, dir.File(log), "", std::chrono::minutes(3));
    EXPECT_TRUE(st.ok() && st->success()) << argv[1] << ": " << (st.ok() ? st->ToString() : st.status().ToString())
                                          << "\n" << testing::ReadLogTail(dir.File(log));
    auto text = Env::Default()->ReadFile(dir.File(log));
    return text.ok() ? *text : std::string();
  };
  run({"export", "--checkpoint", dir.File("checkpoints"), "--out", dir.File("hf")}, "export.log");
  const std::vector<std::string> prompts = {"The quick brown", "def f3(x):\n    return", "Und dann sagte",
                                            "  two spaces", "naïve café"};
  const int64_t new_tokens = 12;
  std::vector<std::string> generate = {"generate", "--checkpoint", dir.File("checkpoints"), "-n",
                                       std::to_string(new_tokens), "--json"};
  for (const std::string& p : prompts) {
    generate.push_back("-p");
    generate.push_back(p);
  }
  const std::string generated = run(generate, "generate.json");
  nlohmann::json samples;
  ASSERT_NO_THROW(samples = nlohmann::json::parse(generated)) << generated;
  ASSERT_EQ(samples["samples"].size(), prompts.size()) << generated;

  nlohmann::json expect = {{"max_new_tokens", new_tokens}, {"encode", nlohmann::json::array()},
                           {"generate", nlohmann::json::array()}};
  for (const std::string& t : {std::string("The quick brown fox jumps over the lazy dog."),
                               std::string("def f3(x):\n    return x * 12\n"), std::string("  two  spaces  "),
                               std::string(" "), std::string(""), std::string("unseen: 日本語 ∑ 🙂\t\n\n")}) {
    expect["encode"].push_back({{"text", t}, {"ids", (*tok)->Encode(t)}});
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& sample = samples["samples"][i];
    ASSERT_EQ(sample["prompt"], prompts[i]);
    std::vector<int32_t> ids = (*tok)->Encode(prompts[i]);
    for (const auto& id : sample["completion_ids"]) ids.push_back(id.get<int32_t>());
    expect["generate"].push_back(
        {{"prompt", prompts[i]}, {"ids", ids}, {"text", prompts[i] + sample["completion"].get<std::string>()}});
  }
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(dir.File("expect.json"), expect.dump(2)).ok());
  std::string output;
  const std::string cmd = std::string(py) + " " + testing::SourceDir() + "/tests/model/hf_export_check.py --defaults " +
                          dir.File("hf") + " " + dir.File("expect.json") + " 2>&1";
  const int rc = testing::RunShellCapturing(cmd, &output);
  std::printf("%s", output.c_str());
  if (rc == 77) GTEST_SKIP() << "python check skipped: " << output;
  EXPECT_EQ(rc, 0) << cmd << "\n" << output;
}

TEST(HfExportTest, WritesTheExpectedFiles) {
  testing::ScopedTempDir dir;
  ModelConfig c = Custom("tiny", 256, 0, 0, 0, 0, 0, 0, 0);
  auto m = MakeModel(c, 1);
  ASSERT_TRUE(m);
  const std::string out = dir.File("export");
  ASSERT_TRUE(ExportHuggingFace(*m, "", out, false).ok());
  auto names = Env::Default()->ListDir(out);
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors"}));
  auto text = Env::Default()->ReadFile(out + "/config.json");
  ASSERT_TRUE(text.ok());
  auto j = nlohmann::json::parse(*text);
  EXPECT_EQ(j["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(j["hidden_size"], c.d_model);
  EXPECT_EQ(j["intermediate_size"], c.ffn_hidden);
  EXPECT_EQ(j["num_key_value_heads"], c.n_kv_heads);
  EXPECT_EQ(j["vocab_size"], 256);
  EXPECT_EQ(j["tie_word_embeddings"], false);
  EXPECT_EQ(j["rope_parameters"]["rope_theta"], c.rope_theta);
  EXPECT_EQ(j["bos_token_id"], 1);
  EXPECT_EQ(j["eos_token_id"], 2);
  std::map<std::string, std::string> meta;
  auto tensors = LoadTensors(out + "/model.safetensors", &meta);
  ASSERT_TRUE(tensors.ok());
  EXPECT_EQ(meta.at("format"), "pt");
  EXPECT_EQ(meta.at("fedps_layout_hash"), m->layout().hash());
  ASSERT_EQ(tensors->size(), m->layout().entries().size());
  auto params = m->NamedParameters();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ((*tensors)[i].first, params[i].first);
    EXPECT_TRUE(torch::equal((*tensors)[i].second, params[i].second)) << params[i].first;
  }
}

TEST(HfExportTest, NeverOverwritesUnlessAskedAndLeavesNoTemporaries) {
  testing::ScopedTempDir dir;
  ModelConfig c = Custom("tiny", 256, 0, 0, 0, 0, -1, 0, 0);
  auto m = MakeModel(c, 1);
  ASSERT_TRUE(m);
  const std::string out = dir.File("export");
  ASSERT_TRUE(Env::Default()->CreateDirs(out).ok());  // an empty folder is fine
  ASSERT_TRUE(ExportHuggingFace(*m, "", out, false).ok());
  Status again = ExportHuggingFace(*m, "", out, false);
  EXPECT_EQ(again.code(), StatusCode::kAlreadyExists) << again.ToString();
  // Overwrite replaces the whole folder (a stray file disappears).
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(out + "/stray.txt", "x").ok());
  ASSERT_TRUE(ExportHuggingFace(*m, "", out + "/", true).ok());
  EXPECT_FALSE(Env::Default()->Exists(out + "/stray.txt"));
  EXPECT_TRUE(Env::Default()->Exists(out + "/model.safetensors"));
  auto names = Env::Default()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"export"});
  // A file where the folder should be.
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(dir.File("file"), "x").ok());
  EXPECT_EQ(ExportHuggingFace(*m, "", dir.File("file"), true).code(), StatusCode::kInvalidArgument);
}

TEST(HfExportTest, TokenizerErrors) {
  testing::ScopedTempDir dir;
  ModelConfig c = Custom("tiny", 256, 0, 0, 0, 0, -1, 0, 0);
  auto m = MakeModel(c, 1);
  ASSERT_TRUE(m);
  EXPECT_EQ(ExportHuggingFace(*m, dir.File("missing.model"), dir.File("a"), false).code(), StatusCode::kNotFound);
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(dir.File("junk.model"), "\xff\xff\xff garbage").ok());
  EXPECT_EQ(ExportHuggingFace(*m, dir.File("junk.model"), dir.File("b"), false).code(),
            StatusCode::kInvalidArgument);
  // A tokenizer larger than the model's vocabulary (400 pieces > 256).
  const std::string tok = TrainTokenizer(dir);
  EXPECT_EQ(ExportHuggingFace(*m, tok, dir.File("c"), false).code(), StatusCode::kInvalidArgument);
  for (const char* name : {"a", "b", "c"}) EXPECT_FALSE(Env::Default()->Exists(dir.File(name))) << name;
  // The conversion itself, on the real tokenizer.
  auto bytes = Env::Default()->ReadFile(tok);
  ASSERT_TRUE(bytes.ok());
  auto files = ConvertSentencePieceForHf(*bytes, 256);
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  EXPECT_EQ(files->unk_id, 0);
  EXPECT_EQ(files->bos_id, 1);
  EXPECT_EQ(files->eos_id, 2);
  auto tj = nlohmann::json::parse(files->tokenizer_json);
  EXPECT_EQ(tj["model"]["type"], "BPE");
  EXPECT_EQ(tj["model"]["vocab"].size(), static_cast<size_t>(files->vocab_size));
  EXPECT_GT(tj["model"]["merges"].size(), 0u);
}

}  // namespace
}  // namespace fedps
