// Tests of `fedps-ctl corpus build` (tools/corpus.h).
//
// Built twice (tests/corpus/CMakeLists.txt): without FEDPS_CORPUS_INTEGRATION the unit
// tests of the readers on small inline fixtures (no network, no apt); with it the one
// integration test that builds a two-source corpus for real through apt and feeds it to
// `fedps-ctl prepare` (skipped with the reason when apt-get cannot reach a mirror).
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/env.h"
#include "common/sha256.h"
#include "tests/testing/ctl.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"
#include "tools/corpus.h"
#include "tools/inflate.h"

namespace fedps::tools {
namespace {

#ifndef FEDPS_CORPUS_INTEGRATION

std::string FromHex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

uint32_t TestCrc32(std::string_view s) {
  uint32_t c = 0xffffffffu;
  for (unsigned char ch : s) {
    c ^= ch;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
  }
  return c ^ 0xffffffffu;
}

uint32_t TestAdler32(std::string_view s) {
  uint32_t a = 1, b = 0;
  for (unsigned char ch : s) {
    a = (a + ch) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

void PutLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutBe32(std::string& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// DEFLATE "stored" blocks: lets the tests build zlib/gzip data without a compressor.
std::string StoredDeflate(std::string_view data) {
  std::string out;
  size_t pos = 0;
  do {
    size_t n = std::min<size_t>(data.size() - pos, 65535);
    bool last = pos + n == data.size();
    out.push_back(last ? 1 : 0);
    PutLe(out, n, 2);
    PutLe(out, n ^ 0xffff, 2);
    out.append(data.substr(pos, n));
    pos += n;
  } while (pos < data.size());
  return out;
}
std::string StoredZlib(std::string_view data) {
  std::string out = std::string("\x78\x01", 2) + StoredDeflate(data);
  PutBe32(out, TestAdler32(data));
  return out;
}
std::string StoredGzip(std::string_view data) {
  std::string out("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10);
  out += StoredDeflate(data);
  PutLe(out, TestCrc32(data), 4);
  PutLe(out, data.size(), 4);
  return out;
}

TEST(InflateTest, FixedHuffmanBlock) {
  auto out = ZlibInflate(FromHex("78dacb48cdc9c957c84027b90070be08bb"));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(*out, "hello hello hello hello\n");
}

TEST(InflateTest, DynamicHuffmanBlock) {
  // zlib.compress(text, 9) of 706 bytes of pangram words: a dynamic-Huffman block.
  const char* hex =
      "78da5d514962c3200cbcf715fa1ad48a43e342038db7d7d7d22057cec118d06816d478e64c5fafef9f46cf57e2df69d353caa39c3f1f14"
      "6b5932ed1c6b68742b2b2d690f756834f3ca4307853c50b834dc79d50fa729ecdb95496ac08347981565eaf6f732d89f37ea16156dc5b60b"
      "20d3724f13ab18ce2e076800b0eb5ac64665e6ea1058cd4e38f30ba2f72199771ab703198f9e47cac6eb92373c7b998e009d5ff7c60d571a"
      "4addb8f7f3b6e5d94f11cf8972b41eb12a589156bee6c67e12fc8f047e2ff3822cfab09a5751310a9f05ed588732bebf060ad083ddebc481"
      "f2716ce2a874f98f3f49f808b3";
  std::string z = FromHex(hex);
  size_t consumed = 0;
  auto out = ZlibInflate(z, &consumed);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->size(), 706u);
  EXPECT_EQ(out->rfind("seven jumps quietly jumping", 0), 0u);
  EXPECT_EQ(Sha256Hex(*out), "dddbb6ae11bdda98b7fdc5e571eddb0a181f49c7ce8f6059c7bf867c267509dd");
  EXPECT_EQ(consumed, z.size());
  // Data after the stream is not part of it (R lazy-load objects follow one another).
  ASSERT_TRUE(ZlibInflate(z + "next object", &consumed).ok());
  EXPECT_EQ(consumed, z.size());
}

TEST(InflateTest, ZlibChecksumAndTruncationAreDataLoss) {
  std::string z = FromHex("78dacb48cdc9c957c84027b90070be08bb");
  std::string bad = z;
  bad.back() ^= 1;  // the Adler-32
  EXPECT_EQ(ZlibInflate(bad).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ZlibInflate(z.substr(0, z.size() - 2)).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ZlibInflate("not zlib at all").status().code(), StatusCode::kDataLoss);
}

TEST(InflateTest, GzipMembersAreConcatenatedAndCrcChecked) {
  std::string gz = FromHex(
      "1f8b08000000000002034bcb2c2a2e51c84dcd4d4a2de20200a7f4850a0d0000001f8b08000000000002032b4e4dcecf4b51c84dcd4d4a2de2"
      "020036184b0e0e000000");
  auto out = Gunzip(gz);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(*out, "first member\nsecond member\n");
  std::string bad = gz;
  bad[bad.size() - 6] ^= 1;  // the second member's CRC
  EXPECT_EQ(Gunzip(bad).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(Gunzip(gz.substr(0, 20)).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(Gunzip("plain text, not gzip").status().code(), StatusCode::kDataLoss);
}

TEST(InflateTest, StoredBlocksAndGzipExtraField) {
  std::string big(70000, 'x');
  for (size_t i = 0; i < big.size(); i += 7) big[i] = static_cast<char>('a' + i % 26);
  auto z = ZlibInflate(StoredZlib(big));
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  EXPECT_EQ(*z, big);
  // dictzip keeps a chunk table in FEXTRA; the reader skips it.
  std::string gz = StoredGzip("dictionary text\n");
  gz[3] = 4;  // FLG.FEXTRA
  gz.insert(10, std::string("\x04\x00RA\x00\x00", 6));
  auto g = Gunzip(gz);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(*g, "dictionary text\n");
}

TEST(Utf8Test, AcceptsValidRejectsInvalid) {
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("Grüße, ½, 日本, 😀"));
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("caf\xe9"));          // Latin-1
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));         // overlong
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));     // surrogate
  EXPECT_FALSE(IsValidUtf8("\xe6\x97"));         // truncated
}

TEST(OsisTest, DropsNotesAndTagsKeepsTitlesOnTheirOwnLine) {
  std::string osis =
      "<title type=\"main\">The Book</title><w lemma=\"strong:H1\">In</w> <w>the</w> beginning"
      "<note placement=\"foot\"><reference>1:1</reference>a footnote</note>, God &amp; men "
      "<transChange type=\"added\">said</transChange>.";
  EXPECT_EQ(OsisToText(osis), "The Book\nIn the beginning, God & men said.");
}

// A zText module with one book of two chapters plus the testament's header entry.
TEST(SwordTest, ReadsZTextBooksChaptersAndVerses) {
  testing::ScopedTempDir dir;
  std::vector<std::string> entries = {
      "<milestone type=\"x-importer\"/>",                                         // block 0
      "<title>The First Book</title>",                                            // block 1: book intro
      "<chapter n=\"1\" osisID=\"Gen.1\" sID=\"Gen.1\"/>",                         // chapter heading
      "In the <w>beginning</w>.",                                                 // 1:1
      "",                                                                         // 1:2 absent
      "And it was so<note>n</note>.",                                             // 1:3
      "<chapter n=\"2\" osisID=\"Gen.2\" sID=\"Gen.2\"/>",                         // chapter 2
      "Thus it ended.",                                                           // 2:1
  };
  std::vector<int> block_of = {0, 1, 1, 1, -1, 1, 1, 1};
  std::array<std::string, 2> blocks;
  std::string bzv;
  PutLe(bzv, 0, 10);  // entry 0: empty
  for (size_t i = 0; i < entries.size(); ++i) {
    if (block_of[i] < 0) {
      PutLe(bzv, 0, 10);
      continue;
    }
    std::string& b = blocks[static_cast<size_t>(block_of[i])];
    PutLe(bzv, static_cast<uint64_t>(block_of[i]), 4);
    PutLe(bzv, b.size(), 4);
    PutLe(bzv, entries[i].size(), 2);
    b += entries[i];
  }
  std::string bzs, bzz;
  for (const std::string& b : blocks) {
    std::string z = StoredZlib(b);
    PutLe(bzs, bzz.size(), 4);
    PutLe(bzs, z.size(), 4);
    PutLe(bzs, b.size(), 4);
    bzz += z;
  }
  Env* env = Env::Default();
  ASSERT_TRUE(env->WriteFileAtomic(dir.File("ot.bzs"), bzs).ok());
  ASSERT_TRUE(env->WriteFileAtomic(dir.File("ot.bzv"), bzv).ok());
  ASSERT_TRUE(env->WriteFileAtomic(dir.File("ot.bzz"), bzz).ok());
  auto docs = ReadSwordZText(dir.path());
  ASSERT_TRUE(docs.ok()) << docs.status().ToString();
  ASSERT_EQ(docs->size(), 1u);  // the header block has no text
  EXPECT_EQ((*docs)[0].name, "ot-01-Gen");
  EXPECT_EQ((*docs)[0].text,
            "The First Book\n\nChapter 1\n1 In the beginning.\n3 And it was so.\n\nChapter 2\n1 Thus it ended.\n");
  // An entry that points outside its block is data loss, not a crash.
  std::string broken = bzv;
  broken[broken.size() - 2] = '\x7f';
  ASSERT_TRUE(env->WriteFileAtomic(dir.File("ot.bzv"), broken).ok());
  EXPECT_EQ(ReadSwordZText(dir.path()).status().code(), StatusCode::kDataLoss);
}

TEST(DictdTest, SplitsEntriesByIndexAndCleansThem) {
  std::string dict =
      "00-database-info\nabout\n"                                   // 0..21
      "Absolute \\Ab\"so*lute\\, a.\n   Free; see {Relative}.\n   [1913 Webster]\n"  // 22..
      "Zebra\n   A striped {horse}. [Obs.]\n";
  size_t a = dict.find("Absolute"), z = dict.find("Zebra");
  auto b64 = [](size_t v) {
    const char* d = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string s;
    do {
      s.insert(s.begin(), d[v % 64]);
      v /= 64;
    } while (v);
    return s;
  };
  std::string index = "00-database-info\tA\t" + b64(a) + "\n" +           //
                      "absolute\t" + b64(a) + "\t" + b64(z - a) + "\n" +  //
                      "Absolute\t" + b64(a) + "\t" + b64(z - a) + "\n" +  // same entry twice
                      "zebra\t" + b64(z) + "\t" + b64(dict.size() - z) + "\n";
  auto entries = SplitDictdEntries(dict, index);
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ(CleanDictEntry((*entries)[0], true), "Absolute \\Ab\"so*lute\\, a.\n   Free; see Relative.");
  EXPECT_EQ(CleanDictEntry((*entries)[1], true), "Zebra\n   A striped horse. [Obs.]");
  EXPECT_EQ(SplitDictdEntries(dict, "x\tA\tzzzz\n").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(SplitDictdEntries(dict, "x\tA!\tB\n").status().code(), StatusCode::kDataLoss);
}

TEST(JargonTest, SplitsChaptersAndEntriesDropsWordLists) {
  std::string text =
      "Chapter 1. Slang\n\n   Hackers talk.\n\n"
      "Glossary\n\n   crawling horror\n\n   creep\n\n   cruft\n\n   crufty\n\n"
      "   :cruft: n.\n\n   1. An unpleasant substance.\n\n   2. Excess.\n\n"
      "   :crufty: adj.\n\n   Poorly built.\n";
  std::vector<std::string> e = SplitJargonEntries(text);
  ASSERT_EQ(e.size(), 3u);  // "Glossary" went with its word list
  EXPECT_EQ(e[0], "Chapter 1. Slang\n\n   Hackers talk.");
  EXPECT_EQ(e[1], ":cruft: n.\n\n   1. An unpleasant substance.\n\n   2. Excess.");
  EXPECT_EQ(e[2], ":crufty: adj.\n\n   Poorly built.");
}

TEST(WordNetTest, ParsesSynsetLines) {
  std::string data =
      "  1 This software and database is being provided to you, the LICENSEE, by  \n"
      "00001740 00 a 01 able 0 005 = 05207437 n 0000 | (usually followed by `to') having the necessary means\n"
      "00002098 00 s 02 good_enough(p) 0 fine(a) 0 000 | adequate; \"it's good enough\"  \n";
  auto lines = ParseWordNetData(data, "adjective");
  ASSERT_TRUE(lines.ok()) << lines.status().ToString();
  ASSERT_EQ(lines->size(), 2u);
  EXPECT_EQ((*lines)[0], "able (adjective): (usually followed by `to') having the necessary means");
  EXPECT_EQ((*lines)[1], "good enough, fine (adjective): adequate; \"it's good enough\"");
  EXPECT_EQ(ParseWordNetData("00001740 00 a 09 able 0 | x\n", "adjective").status().code(), StatusCode::kDataLoss);
}

// One serialized character vector, as R's lazy-load database stores it.
std::string RObject(const std::vector<std::string>& strings, bool latin1 = false) {
  std::string s = "X\n";
  PutBe32(s, 3);
  PutBe32(s, 0x40201);
  PutBe32(s, 0x30500);
  PutBe32(s, 5);
  s += "UTF-8";
  PutBe32(s, 16);  // STRSXP
  PutBe32(s, static_cast<uint32_t>(strings.size()));
  for (const std::string& x : strings) {
    PutBe32(s, 9 | (latin1 ? (1u << 14) : (1u << 15)));  // CHARSXP (LATIN1 / UTF8 mark)
    PutBe32(s, static_cast<uint32_t>(x.size()));
    s += x;
  }
  std::string block;
  PutBe32(block, static_cast<uint32_t>(s.size()));
  return block + StoredZlib(s);
}

TEST(RDataTest, ReadsCharacterVectorsFromLazyLoadDb) {
  std::string rdb = RObject({"EMMA", "", "Emma Woodhouse, handsome"}) + RObject({"caf\xe9"}, /*latin1=*/true);
  auto texts = ReadRCharacterVectors(rdb);
  ASSERT_TRUE(texts.ok()) << texts.status().ToString();
  ASSERT_EQ(texts->size(), 2u);
  EXPECT_EQ((*texts)[0], "EMMA\n\nEmma Woodhouse, handsome");
  EXPECT_EQ((*texts)[1], "café");
  EXPECT_FALSE(ReadRCharacterVectors(std::string("\x00\x00\x00\x05garbage", 11)).ok());
}

TEST(GroupEntriesTest, GroupsInOrderUpToTheTarget) {
  std::vector<std::string> entries = {"aaaa", "bbbb", "", "cccc", "dddd", "eeee"};
  std::vector<TextDocument> docs = GroupEntries("dict", entries, 10);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].name, "dict-0001");
  EXPECT_EQ(docs[0].text, "aaaa\n\nbbbb\n");
  EXPECT_EQ(docs[1].text, "cccc\n\ndddd\n");
  EXPECT_EQ(docs[2].name, "dict-0003");
  EXPECT_EQ(docs[2].text, "eeee\n");
}

TEST(SelectionTest, OrderIsADeterministicPermutation) {
  std::vector<std::string> names = {"a.py", "b.py", "c.py", "d.py", "e.py"};
  std::vector<size_t> order = SelectionOrder("src", names);
  EXPECT_EQ(order, SelectionOrder("src", names));
  EXPECT_EQ(std::set<size_t>(order.begin(), order.end()).size(), names.size());
  EXPECT_NE(order, SelectionOrder("other", names));  // differs per source (5! orders: a clash is unlikely)
}

TEST(SourcesTest, TableIsConsistent) {
  std::set<std::string> ids, default_domains;
  for (const CorpusSource& s : CorpusSources()) {
    EXPECT_TRUE(IsValidPackageName(s.id)) << s.id;
    EXPECT_TRUE(ids.insert(s.id).second) << "duplicate " << s.id;
    EXPECT_FALSE(s.licence.empty()) << s.id;
    if (s.in_default) default_domains.insert(s.domain);
  }
  EXPECT_GE(default_domains.size(), 5u);
  EXPECT_TRUE(default_domains.count("spanish"));  // the default held-out domain
}

TEST(SourcesTest, PackageNamesAndLicences) {
  EXPECT_TRUE(IsValidPackageName("jargon-text"));
  EXPECT_TRUE(IsValidPackageName("libstdc++6"));
  EXPECT_TRUE(IsValidPackageName("python3.11-doc"));
  EXPECT_FALSE(IsValidPackageName("-o"));
  EXPECT_FALSE(IsValidPackageName("a;rm -rf /"));
  EXPECT_FALSE(IsValidPackageName("Upper"));
  EXPECT_FALSE(IsValidPackageName("x"));
  EXPECT_EQ(LicenceFromCopyright("Format: dep5\n\nFiles: *\nLicense:\nFiles: b\nLicense: GPL-3+\n"), "GPL-3+");
  EXPECT_EQ(LicenceFromCopyright("This is public domain.\n"), "");
}

TEST(BuildCorpusTest, RejectsUnknownSourcesAndForeignOutputBeforeAnyDownload) {
  testing::ScopedTempDir dir;
  CorpusBuildOptions o;
  o.out_dir = dir.File("out");
  o.cache_dir = dir.File("cache");
  o.sources = {"no-such-source"};
  o.progress = [](const std::string&) {};
  auto r = BuildCorpus(o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("no-such-source"), std::string::npos);
  // A non-empty folder that is not a corpus is not replaced without --force.
  ASSERT_TRUE(Env::Default()->CreateDirs(dir.File("out")).ok());
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(dir.File("out/notes.txt"), "mine").ok());
  o.sources = {"jargon-text"};
  r = BuildCorpus(o);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Env::Default()->Exists(dir.File("out/notes.txt")));
  EXPECT_FALSE(Env::Default()->Exists(dir.File("cache/debs")));
}

#else  // FEDPS_CORPUS_INTEGRATION

using std::chrono::seconds;

StatusOr<testing::ExitStatus> RunLogged(const std::vector<std::string>& argv, const std::string& log,
                                        const std::string& cwd = "") {
  return testing::RunLogged(argv, log, cwd, std::chrono::milliseconds(600'000));
}

// Builds jargon-text + the Python standard library for real (apt-get download, dpkg -x),
// checks corpus.json and the copyright files, rebuilds from the cache (same bytes, no
// download), and prepares the result with `fedps-ctl prepare`.
TEST(CorpusIntegrationTest, SmokeCorpusBuildsCachesAndPrepares) {
  testing::ScopedTempDir dir;
  Env* env = Env::Default();
  // Can apt reach a mirror at all?
  ASSERT_TRUE(env->CreateDirs(dir.File("probe")).ok());
  auto probe = RunLogged({"apt-get", "download", "-q", "jargon-text"}, dir.File("probe.log"), dir.File("probe"));
  if (!probe.ok() || !probe->success()) {
    GTEST_SKIP() << "apt-get download cannot fetch packages here (no mirror reachable?): "
                 << testing::ReadLogTail(dir.File("probe.log"), 400);
  }
  const std::string ctl = testing::BinPath("fedps-ctl");
  const std::string out = dir.File("corpus"), cache = dir.File("cache");
  std::vector<std::string> build = {ctl,     "corpus", "build", "--out", out, "--cache", cache,
                                    "--sources", "jargon-text,libpython3.11-stdlib", "--max-mb-per-domain", "1",
                                    "--held-out", "reference"};
  auto start = std::chrono::steady_clock::now();
  auto first = RunLogged(build, dir.File("build1.log"));
  ASSERT_TRUE(first.ok() && first->success()) << testing::ReadLogTail(dir.File("build1.log"));
  double first_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(first_s, 60.0) << "the smoke corpus should build in well under a minute";

  auto text = env->ReadFile(JoinPath(out, "corpus.json"));
  ASSERT_TRUE(text.ok());
  nlohmann::json corpus = nlohmann::json::parse(*text);
  EXPECT_EQ(corpus["held_out_domain"], "reference");
  EXPECT_EQ(corpus["training_domains"], nlohmann::json::array({"code"}));
  ASSERT_EQ(corpus["sources"].size(), 2u);
  std::map<std::string, std::string> sha;
  for (const auto& s : corpus["sources"]) {
    std::string id = s["id"], domain = s["domain"];
    SCOPED_TRACE(id);
    EXPECT_FALSE(s["version"].get<std::string>().empty());
    EXPECT_FALSE(s["licence"].get<std::string>().empty());
    EXPECT_GT(s["documents"].get<int64_t>(), 1);
    EXPECT_GT(s["bytes"].get<int64_t>(), 100'000);
    EXPECT_LE(s["bytes"].get<int64_t>(), 1'000'000);
    EXPECT_TRUE(env->Exists(JoinPath(out, domain + "/COPYRIGHT-" + id)));
    auto sum = Sha256File(JoinPath(out, s["file"].get<std::string>()));
    ASSERT_TRUE(sum.ok());
    EXPECT_EQ(*sum, s["sha256"]);
    sha[id] = *sum;
  }
  EXPECT_FALSE(env->Exists(out + ".partial"));

  // Second run: everything from the cache, identical output.
  auto second = RunLogged(build, dir.File("build2.log"));
  ASSERT_TRUE(second.ok() && second->success()) << testing::ReadLogTail(dir.File("build2.log"));
  std::string log2 = testing::ReadLogTail(dir.File("build2.log"), 100000);
  EXPECT_EQ(log2.find("downloaded"), std::string::npos) << log2;
  EXPECT_NE(log2.find("(cached)"), std::string::npos) << log2;
  for (const auto& [id, sum] : sha) {
    auto again = Sha256File(JoinPath(out, id == "jargon-text" ? "reference/jargon-text.jsonl"
                                                             : "code/libpython3.11-stdlib.jsonl"));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, sum) << id << " is not deterministic";
  }

  // prepare takes the domain folders (the COPYRIGHT files are ignored).
  auto prep = RunLogged({ctl, "prepare", "--input", JoinPath(out, "code"), "--input", JoinPath(out, "reference"),
                         "--vocab-size", "1000", "--max-bytes", "400000", "--out", dir.File("prepared")},
                        dir.File("prepare.log"));
  ASSERT_TRUE(prep.ok() && prep->success()) << testing::ReadLogTail(dir.File("prepare.log"));
  auto manifest = env->ReadFile(dir.File("prepared/manifest.json"));
  ASSERT_TRUE(manifest.ok());
  std::string m = *manifest;
  EXPECT_NE(m.find("\"code\""), std::string::npos);
  EXPECT_NE(m.find("\"reference\""), std::string::npos);
}

#endif  // FEDPS_CORPUS_INTEGRATION

}  // namespace
}  // namespace fedps::tools
