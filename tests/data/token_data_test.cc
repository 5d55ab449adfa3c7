#include "model/token_data.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "common/env.h"
#include "common/sha256.h"
#include "model/tokenizer.h"
#include "tests/data/data_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

using datatest::SharedTokenizer;
using datatest::TestdataPath;
using datatest::WriteText;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A corpus of three domains: a folder of .txt files (with a nested folder, a
// hidden file and a .md file that are ignored), a .jsonl file, a one-document .txt.
struct Corpus {
  std::vector<std::string> specs;
  std::map<std::string, std::vector<std::string>> docs;  // by domain, in input order
};

Corpus MakeCorpus(const std::string& root, int code_docs = 12, int prose_docs = 60) {
  Corpus c;
  std::vector<std::string> code = datatest::SyntheticDocs(code_docs, 1);
  for (int i = 0; i < code_docs; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "%s/f%02d.txt", i % 3 == 0 ? "sub" : "top", i);
    WriteText(JoinPath(root, std::string("code/") + name), code[static_cast<size_t>(i)]);
  }
  // Sorted by path: everything under sub/ before top/.
  std::vector<std::string> sorted;
  for (int i = 0; i < code_docs; i += 3) sorted.push_back(code[static_cast<size_t>(i)]);
  for (int i = 0; i < code_docs; ++i) {
    if (i % 3 != 0) sorted.push_back(code[static_cast<size_t>(i)]);
  }
  c.docs["code"] = sorted;
  WriteText(JoinPath(root, "code/.hidden/ignored.txt"), "hidden");
  WriteText(JoinPath(root, "code/README.md"), "not a .txt");
  c.docs["prose"] = datatest::SyntheticDocs(prose_docs, 2);
  datatest::WriteJsonl(JoinPath(root, "prose.jsonl"), c.docs["prose"]);
  c.docs["notes"] = {"A single note.\nWith two lines and a tab\there."};
  WriteText(JoinPath(root, "notes.txt"), c.docs["notes"][0]);
  c.specs = {"code=" + JoinPath(root, "code"), JoinPath(root, "prose.jsonl"), JoinPath(root, "notes.txt")};
  return c;
}

PrepareOptions Options(const Corpus& c, const std::string& out) {
  PrepareOptions o;
  o.inputs = c.specs;
  o.out_dir = out;
  o.threads = 2;
  o.progress = false;
  return o;
}

std::vector<uint32_t> ReadStream(const Manifest& m, const DomainInfo& d, Split split) {
  auto stream = TokenStream::Open(m, d, split);
  EXPECT_TRUE(stream.ok()) << stream.status().ToString();
  if (!stream.ok()) return {};
  std::vector<uint32_t> tokens(static_cast<size_t>(stream->size()));
  stream->Copy(0, stream->size(), tokens.data());
  return tokens;
}

// The documents of a domain split, decoded.
std::vector<std::string> DecodedDocs(const Manifest& m, const DomainInfo& d, Split split) {
  std::vector<std::string> out;
  for (const auto& ids : datatest::SplitAtEos(ReadStream(m, d, split), static_cast<uint32_t>(m.tokenizer.eos_id))) {
    out.push_back(SharedTokenizer().Decode(ids));
  }
  return out;
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

TEST(InputSpecTest, DomainFromNameOrBasename) {
  auto a = ParseInputSpec("code=/data/src/python");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->domain, "code");
  EXPECT_EQ(a->path, "/data/src/python");
  auto b = ParseInputSpec("/data/wiki.en.jsonl");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->domain, "wiki.en");
  auto c = ParseInputSpec("/data/books/");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->domain, "books");
  auto d = ParseInputSpec("/data/a=b/c.txt");  // '=' inside a path, not a name
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->path, "/data/a=b/c.txt");
  EXPECT_EQ(d->domain, "c");
  auto bad = ParseInputSpec("/data/my notes.txt");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(bad.status().message(), "domain=path")) << bad.status().message();
  EXPECT_FALSE(ParseInputSpec("code=").ok());
}

TEST(InputSpecTest, FoldersAreListedRecursivelySortedWithoutHiddenOrOtherFiles) {
  testing::ScopedTempDir dir;
  Corpus c = MakeCorpus(dir.path(), 6, 3);
  auto files = ListInputFiles(dir.File("code"));
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  std::vector<std::string> want = {dir.File("code/sub/f00.txt"), dir.File("code/sub/f03.txt"),
                                   dir.File("code/top/f01.txt"), dir.File("code/top/f02.txt"),
                                   dir.File("code/top/f04.txt"), dir.File("code/top/f05.txt")};
  EXPECT_EQ(*files, want);
  EXPECT_EQ(ListInputFiles(dir.File("nope")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ListInputFiles(dir.File("code/README.md")).status().code(), StatusCode::kInvalidArgument);
  WriteText(dir.File("empty/x.md"), "x");
  auto empty = ListInputFiles(dir.File("empty"));
  EXPECT_TRUE(Contains(empty.status().message(), "no .txt or .jsonl")) << empty.status().message();
}

TEST(InputSpecTest, MalformedJsonlReportsFileAndLine) {
  for (const auto& [name, line, what] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"malformed.jsonl", ":3:", "malformed JSON"}, {"no_text.jsonl", ":2:", "\"text\""}}) {
    std::string path = TestdataPath(name);
    int seen = 0;
    Status s = ForEachDocument(path, datatest::ReadText(path), [&](std::string_view, int64_t) {
      ++seen;
      return Status::Ok();
    });
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(s.message(), path + line)) << s.message();
    EXPECT_TRUE(Contains(s.message(), what)) << s.message();
  }
  // docs.jsonl: five documents, a blank line skipped, line numbers as in the file.
  std::vector<int64_t> lines;
  Status ok = ForEachDocument(TestdataPath("docs.jsonl"), datatest::ReadText(TestdataPath("docs.jsonl")),
                              [&](std::string_view, int64_t line) {
                                lines.push_back(line);
                                return Status::Ok();
                              });
  EXPECT_TRUE(ok.ok()) << ok.ToString();
  EXPECT_EQ(lines, (std::vector<int64_t>{1, 2, 4, 5, 6}));
}

TEST(PrepareTest, WritesShardsManifestAndTokenizerCopy) {
  testing::ScopedTempDir dir;
  Corpus c = MakeCorpus(dir.File("in"));
  const Tokenizer& tok = SharedTokenizer();
  auto m = PrepareDataset(Options(c, dir.File("out")), tok);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->DomainNames(), (std::vector<std::string>{"code", "prose", "notes"}));
  EXPECT_EQ(m->dtype, TokenDtype::kUint16);
  EXPECT_EQ(m->tokenizer.sha256, tok.sha256());
  EXPECT_EQ(m->tokenizer.vocab_size, 512);
  EXPECT_EQ(m->tokenizer.eos_id, 2);
  EXPECT_EQ(*Sha256File(dir.File("out/tokenizer.model")), tok.sha256());
  // Nothing but the input and the output is left beside them (no temporaries).
  EXPECT_EQ(*Env::Default()->ListDir(dir.path()), (std::vector<std::string>{"in", "out"}));

  auto loaded = LoadManifest(dir.File("out"), tok);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->ToJson(), m->ToJson());
  EXPECT_TRUE(loaded->Verify().ok());

  for (const DomainInfo& d : loaded->domains) {
    const auto& want = c.docs.at(d.name);
    SCOPED_TRACE(d.name);
    EXPECT_EQ(d.train.documents + d.val.documents, static_cast<int64_t>(want.size()));
    if (want.size() >= 2) {
      EXPECT_GE(d.val.documents, 1);
    } else {
      EXPECT_EQ(d.val.documents, 0);
    }
    int64_t tokens = 0, bytes = 0;
    for (const std::string& doc : want) {
      tokens += static_cast<int64_t>(tok.Encode(doc).size()) + 1;
      bytes += static_cast<int64_t>(doc.size());
    }
    EXPECT_EQ(d.train.tokens + d.val.tokens, tokens);
    EXPECT_EQ(d.train.bytes + d.val.bytes, bytes);
    // Every document comes back, whole, from exactly one split.
    std::vector<std::string> train = DecodedDocs(*loaded, d, Split::kTrain);
    std::vector<std::string> val = DecodedDocs(*loaded, d, Split::kValidation);
    EXPECT_EQ(static_cast<int64_t>(train.size()), d.train.documents);
    EXPECT_EQ(static_cast<int64_t>(val.size()), d.val.documents);
    train.insert(train.end(), val.begin(), val.end());
    EXPECT_EQ(Sorted(train), Sorted(want));
    for (const TokenShardInfo& sh : d.train.shards) {
      EXPECT_EQ(*Env::Default()->FileSize(loaded->ShardPath(sh)), 2 * sh.tokens);
    }
  }
  EXPECT_EQ(loaded->FindDomain("code")->sources.size(), 12u);
  EXPECT_EQ(loaded->FindDomain("code")->sources[0].path, dir.File("in/code/sub/f00.txt"));
  EXPECT_EQ(loaded->FindDomain("notes")->sources[0].sha256, *Sha256File(dir.File("in/notes.txt")));
  EXPECT_EQ(loaded->FindDomain("code")->train.shards[0].file, "code/train-00000.bin");
}

TEST(PrepareTest, OutputIsTheSameForAnyThreadCountAndShardsAreBounded) {
  testing::ScopedTempDir dir;
  Corpus c = MakeCorpus(dir.File("in"));
  PrepareOptions one = Options(c, dir.File("one"));
  one.threads = 1;
  one.max_shard_bytes = 1000;
  PrepareOptions four = Options(c, dir.File("four"));
  four.threads = 4;
  four.max_shard_bytes = 1000;
  auto a = PrepareDataset(one, SharedTokenizer());
  auto b = PrepareDataset(four, SharedTokenizer());
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  nlohmann::json ja = a->ToJson(), jb = b->ToJson();
  ja.erase("created");
  jb.erase("created");
  EXPECT_EQ(ja, jb);
  const DomainInfo* prose = a->FindDomain("prose");
  ASSERT_GT(prose->train.shards.size(), 2u);
  for (size_t i = 0; i < prose->train.shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "prose/train-%05zu.bin", i);
    EXPECT_EQ(prose->train.shards[i].file, name);
    EXPECT_LE(prose->train.shards[i].tokens, 500);
    EXPECT_EQ(datatest::ReadText(a->ShardPath(prose->train.shards[i])),
              datatest::ReadText(b->ShardPath(prose->train.shards[i])));
  }
  // Documents straddle shards: the concatenated stream still splits into them.
  EXPECT_EQ(static_cast<int64_t>(DecodedDocs(*a, *prose, Split::kTrain).size()), prose->train.documents);
}

TEST(PrepareTest, ValidationSplitFollowsFractionWithOneDocumentMinimum) {
  testing::ScopedTempDir dir;
  std::vector<std::string> many = datatest::SyntheticDocs(400, 3, 5, 10);
  datatest::WriteJsonl(dir.File("many.jsonl"), many);
  datatest::WriteJsonl(dir.File("two.jsonl"), {"first of two", "second of two"});
  WriteText(dir.File("one.txt"), "only one");
  PrepareOptions o;
  o.inputs = {dir.File("many.jsonl"), dir.File("two.jsonl"), dir.File("one.txt")};
  o.out_dir = dir.File("half");
  o.val_fraction = 0.5;
  o.progress = false;
  auto half = PrepareDataset(o, SharedTokenizer());
  ASSERT_TRUE(half.ok()) << half.status().ToString();
  EXPECT_GT(half->FindDomain("many")->val.documents, 150);
  EXPECT_LT(half->FindDomain("many")->val.documents, 250);

  o.out_dir = dir.File("none");
  o.val_fraction = 0.0;
  auto none = PrepareDataset(o, SharedTokenizer());
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_EQ(none->FindDomain("many")->val.documents, 1);
  EXPECT_EQ(none->FindDomain("two")->val.documents, 1);
  EXPECT_EQ(DecodedDocs(*none, *none->FindDomain("two"), Split::kValidation),
            std::vector<std::string>{"second of two"});  // the last one is held back for it
  EXPECT_EQ(none->FindDomain("one")->val.documents, 0);
  EXPECT_EQ(none->FindDomain("one")->train.documents, 1);

  // Nearly everything hashes to validation, yet every domain keeps a training document.
  o.out_dir = dir.File("most");
  o.val_fraction = 0.99;
  auto most = PrepareDataset(o, SharedTokenizer());
  ASSERT_TRUE(most.ok()) << most.status().ToString();
  EXPECT_GT(most->FindDomain("many")->val.documents, 380);
  EXPECT_EQ(most->FindDomain("two")->train.documents, 1);
  EXPECT_EQ(most->FindDomain("two")->val.documents, 1);
  EXPECT_EQ(most->FindDomain("one")->train.documents, 1);
  EXPECT_EQ(most->FindDomain("one")->val.documents, 0);

  o.val_fraction = 1.0;
  EXPECT_EQ(PrepareDataset(o, SharedTokenizer()).status().code(), StatusCode::kInvalidArgument);
}

TEST(PrepareTest, BadInputsFailClearlyAndLeaveNothingBehind) {
  testing::ScopedTempDir dir;
  PrepareOptions o;
  o.out_dir = dir.File("out");
  o.progress = false;
  auto expect_error = [&](std::vector<std::string> inputs, StatusCode code, const std::string& text) {
    o.inputs = std::move(inputs);
    auto m = PrepareDataset(o, SharedTokenizer());
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), code) << m.status().ToString();
    EXPECT_TRUE(Contains(m.status().message(), text)) << m.status().message();
    EXPECT_FALSE(Env::Default()->Exists(dir.File("out")));
  };
  expect_error({TestdataPath("malformed.jsonl")}, StatusCode::kInvalidArgument, "malformed.jsonl:3:");
  expect_error({TestdataPath("docs.jsonl"), TestdataPath("no_text.jsonl")}, StatusCode::kInvalidArgument,
               "no_text.jsonl:2:");
  expect_error({dir.File("missing.txt")}, StatusCode::kNotFound, "missing.txt");
  WriteText(dir.File("empty.txt"), "");
  expect_error({dir.File("empty.txt")}, StatusCode::kInvalidArgument, "empty.txt is empty");
  WriteText(dir.File("blank.jsonl"), "\n\n  \n");
  expect_error({dir.File("blank.jsonl")}, StatusCode::kInvalidArgument, "has no documents");
  expect_error({}, StatusCode::kInvalidArgument, "at least one");
  // Only the inputs remain: no temporary folder from the failed runs.
  EXPECT_EQ(*Env::Default()->ListDir(dir.path()), (std::vector<std::string>{"blank.jsonl", "empty.txt"}));
}

TEST(PrepareTest, RefusesNonEmptyOutputUnlessForcedAndAFailureKeepsTheOldData) {
  testing::ScopedTempDir dir;
  Corpus c = MakeCorpus(dir.File("in"));
  PrepareOptions o = Options(c, dir.File("out"));
  auto first = PrepareDataset(o, SharedTokenizer());
  ASSERT_TRUE(first.ok()) << first.status().ToString();

  auto again = PrepareDataset(o, SharedTokenizer());
  EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(again.status().message(), "--force")) << again.status().message();

  o.force = true;
  o.inputs = {TestdataPath("docs.jsonl"), TestdataPath("malformed.jsonl")};
  EXPECT_FALSE(PrepareDataset(o, SharedTokenizer()).ok());
  auto kept = LoadManifest(dir.File("out"));
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  EXPECT_EQ(kept->DomainNames(), first->DomainNames());
  EXPECT_TRUE(kept->Verify().ok());

  o.inputs = {TestdataPath("docs.jsonl")};
  auto replaced = PrepareDataset(o, SharedTokenizer());
  ASSERT_TRUE(replaced.ok()) << replaced.status().ToString();
  EXPECT_EQ(LoadManifest(dir.File("out"))->DomainNames(), std::vector<std::string>{"docs"});
  EXPECT_FALSE(Env::Default()->Exists(dir.File("out/code")));
  EXPECT_EQ(*Env::Default()->ListDir(dir.path()), (std::vector<std::string>{"in", "out"}));
}

TEST(ManifestTest, LoadChecksTokenizerShardsAndFormat) {
  testing::ScopedTempDir dir;
  Corpus c = MakeCorpus(dir.File("in"));
  ASSERT_TRUE(PrepareDataset(Options(c, dir.File("out")), SharedTokenizer()).ok());
  const std::string out = dir.File("out");
  const std::string other(64, 'a');
  auto mismatch = LoadManifest(out, other);
  EXPECT_EQ(mismatch.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(mismatch.status().message(), other)) << mismatch.status().message();
  EXPECT_TRUE(Contains(mismatch.status().message(), SharedTokenizer().sha256())) << mismatch.status().message();

  auto m = LoadManifest(out);
  ASSERT_TRUE(m.ok());
  const std::string shard = m->ShardPath(m->FindDomain("prose")->train.shards[0]);
  std::string bytes = datatest::ReadText(shard);
  // Same size, one flipped byte: only Verify() (which hashes) notices.
  std::string flipped = bytes;
  flipped[10] = static_cast<char>(flipped[10] ^ 0x5A);
  WriteText(shard, flipped);
  EXPECT_TRUE(LoadManifest(out).ok());
  Status v = LoadManifest(out)->Verify();
  EXPECT_EQ(v.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(v.message(), "prose/train-00000.bin")) << v.message();
  // Truncated: caught on open.
  WriteText(shard, bytes.substr(0, bytes.size() - 2));
  auto truncated = LoadManifest(out);
  EXPECT_EQ(truncated.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(truncated.status().message(), "prose/train-00000.bin")) << truncated.status().message();
  // Missing.
  ASSERT_TRUE(Env::Default()->RemoveFile(shard).ok());
  auto missing = LoadManifest(out);
  EXPECT_EQ(missing.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(missing.status().message(), "missing")) << missing.status().message();
  WriteText(shard, bytes);
  EXPECT_TRUE(LoadManifest(out).ok());

  // A changed tokenizer copy no longer matches the manifest.
  const std::string model = datatest::ReadText(dir.File("out/tokenizer.model"));
  WriteText(dir.File("out/tokenizer.model"), model + "x");
  EXPECT_EQ(LoadManifest(out).status().code(), StatusCode::kDataLoss);
  WriteText(dir.File("out/tokenizer.model"), model);

  // Format problems.
  nlohmann::json j = m->ToJson();
  j["version"] = 2;
  WriteText(dir.File("out/manifest.json"), j.dump());
  auto future = LoadManifest(out);
  EXPECT_EQ(future.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(future.status().message(), "version 2")) << future.status().message();
  j = m->ToJson();
  j["domains"][0]["train"]["shards"][0]["file"] = "../escape.bin";
  WriteText(dir.File("out/manifest.json"), j.dump());
  EXPECT_EQ(LoadManifest(out).status().code(), StatusCode::kDataLoss);
  j = m->ToJson();
  j["domains"][0]["train"].erase("tokens");
  WriteText(dir.File("out/manifest.json"), j.dump());
  auto no_tokens = LoadManifest(out);
  EXPECT_EQ(no_tokens.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(no_tokens.status().message(), "tokens")) << no_tokens.status().message();
  WriteText(dir.File("out/manifest.json"), "{ not json");
  EXPECT_EQ(LoadManifest(out).status().code(), StatusCode::kDataLoss);
  auto none = LoadManifest(dir.File("in"));
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(none.status().message(), "fedps-ctl prepare")) << none.status().message();
}

TEST(PartitionTest, ByDomainDealsDomainsRoundRobin) {
  testing::ScopedTempDir dir;
  Corpus c = MakeCorpus(dir.File("in"));
  auto src = PrepareDataset(Options(c, dir.File("data")), SharedTokenizer());
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  auto clients = PartitionDataset(dir.File("data"), dir.File("parts"), 2, PartitionMode::kByDomain, 0);
  ASSERT_TRUE(clients.ok()) << clients.status().ToString();
  ASSERT_EQ(clients->size(), 2u);
  EXPECT_EQ(*Env::Default()->ListDir(dir.File("parts")), (std::vector<std::string>{"client-0", "client-1"}));
  const std::vector<std::vector<std::string>> want = {{"code", "notes"}, {"prose"}};
  for (int k = 0; k < 2; ++k) {
    auto m = LoadManifest(dir.File("parts/client-" + std::to_string(k)), SharedTokenizer());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_TRUE(m->Verify().ok());
    EXPECT_EQ(m->DomainNames(), want[static_cast<size_t>(k)]);
    ASSERT_TRUE(m->partition.has_value());
    EXPECT_EQ(m->partition->mode, "domain");
    EXPECT_EQ(m->partition->client, k);
    EXPECT_EQ(m->partition->clients, 2);
    for (const DomainInfo& d : m->domains) {
      const DomainInfo* s = src->FindDomain(d.name);
      EXPECT_EQ(d.train.documents, s->train.documents);
      EXPECT_EQ(d.val.documents, s->val.documents);
      EXPECT_EQ(d.train.tokens, s->train.tokens);
      EXPECT_EQ(d.val.bytes, s->val.bytes);
    }
  }
  auto too_many = PartitionDataset(dir.File("data"), dir.File("parts4"), 4, PartitionMode::kByDomain, 0);
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(too_many.status().message(), "only 3 domains")) << too_many.status().message();
  EXPECT_FALSE(Env::Default()->Exists(dir.File("parts4")));

  auto exists = PartitionDataset(dir.File("data"), dir.File("parts"), 2, PartitionMode::kByDomain, 0);
  EXPECT_EQ(exists.status().code(), StatusCode::kFailedPrecondition);
}

TEST(PartitionTest, IidDealsEveryDomainsDocumentsAcrossClients) {
  testing::ScopedTempDir dir;
  datatest::WriteJsonl(dir.File("in/a.jsonl"), datatest::SyntheticDocs(40, 5));
  datatest::WriteJsonl(dir.File("in/b.jsonl"), datatest::SyntheticDocs(31, 6));
  PrepareOptions o;
  o.inputs = {dir.File("in/a.jsonl"), dir.File("in/b.jsonl")};
  o.out_dir = dir.File("data");
  o.progress = false;
  o.val_fraction = 0.1;
  auto src = PrepareDataset(o, SharedTokenizer());
  ASSERT_TRUE(src.ok()) << src.status().ToString();

  PartitionOptions po;
  po.max_shard_bytes = 600;  // several shards per client
  auto parts = PartitionDataset(dir.File("data"), dir.File("iid"), 3, PartitionMode::kIid, 17, po);
  ASSERT_TRUE(parts.ok()) << parts.status().ToString();
  for (const DomainInfo& s : src->domains) {
    SCOPED_TRACE(s.name);
    int64_t docs = 0, tokens = 0, bytes = 0;
    std::vector<std::string> all;
    int64_t fewest = INT64_MAX, most = 0;
    for (int k = 0; k < 3; ++k) {
      auto m = LoadManifest(dir.File("iid/client-" + std::to_string(k)), SharedTokenizer());
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      EXPECT_TRUE(m->Verify().ok());
      EXPECT_EQ(m->DomainNames(), src->DomainNames());
      const DomainInfo* d = m->FindDomain(s.name);
      docs += d->train.documents;
      tokens += d->train.tokens;
      bytes += d->train.bytes;
      fewest = std::min(fewest, d->train.documents);
      most = std::max(most, d->train.documents);
      std::vector<std::string> mine = DecodedDocs(*m, *d, Split::kTrain);
      EXPECT_EQ(static_cast<int64_t>(mine.size()), d->train.documents);
      all.insert(all.end(), mine.begin(), mine.end());
      // Every client validates on the whole validation split.
      EXPECT_EQ(nlohmann::json(d->val.documents), nlohmann::json(s.val.documents));
      ASSERT_EQ(d->val.shards.size(), s.val.shards.size());
      for (size_t i = 0; i < s.val.shards.size(); ++i) EXPECT_EQ(d->val.shards[i].sha256, s.val.shards[i].sha256);
    }
    EXPECT_EQ(docs, s.train.documents);
    EXPECT_EQ(tokens, s.train.tokens);
    EXPECT_EQ(bytes, s.train.bytes);
    EXPECT_LE(most - fewest, 1);
    EXPECT_EQ(Sorted(all), Sorted(DecodedDocs(*src, s, Split::kTrain)));
  }

  // Same seed, same deal; another seed, another one.
  auto again = PartitionDataset(dir.File("data"), dir.File("iid2"), 3, PartitionMode::kIid, 17, po);
  auto other = PartitionDataset(dir.File("data"), dir.File("iid3"), 3, PartitionMode::kIid, 18, po);
  ASSERT_TRUE(again.ok() && other.ok());
  auto shas = [](const Manifest& m) {
    std::vector<std::string> v;
    for (const auto& sh : m.FindDomain("a")->train.shards) v.push_back(sh.sha256);
    return v;
  };
  EXPECT_EQ(shas((*again)[1]), shas((*parts)[1]));
  EXPECT_NE(shas((*other)[1]), shas((*parts)[1]));

  auto too_many = PartitionDataset(dir.File("data"), dir.File("iid40"), 40, PartitionMode::kIid, 1);
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(too_many.status().message(), "fewer than 40 clients")) << too_many.status().message();
  EXPECT_FALSE(PartitionDataset(dir.File("data"), dir.File("data"), 2, PartitionMode::kIid, 1, {true, 1 << 20}).ok());
  EXPECT_TRUE(LoadManifest(dir.File("data")).ok());
}

}  // namespace
}  // namespace fedps
