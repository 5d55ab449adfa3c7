#include "common/config.h"

#include <gtest/gtest.h>

#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

TEST(ConfigTest, DefaultsAndOverrides) {
  auto c = ParseConfig(R"(
[run]
id = "t1"
seed = 7
[model]
preset = "20m"
tie_embeddings = true
[train]
lr = 1e-3
steps = 50
)", "x.toml");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->run.id, "t1");
  EXPECT_EQ(c->run.seed, 7u);
  EXPECT_EQ(c->model.preset, "20m");
  EXPECT_EQ(c->model.tie_embeddings, 1);
  EXPECT_EQ(c->model.d_model, 0);
  EXPECT_DOUBLE_EQ(c->train.lr, 1e-3);
  EXPECT_EQ(c->train.steps, 50);
  EXPECT_EQ(c->train.micro_batch, 8);  // default
  EXPECT_EQ(c->train.schedule_clock, "local");
  EXPECT_EQ(c->ps.dn_gradient_scale, -1);
  EXPECT_EQ(c->ps.outer_warmup_steps, 0);
}

TEST(ConfigTest, QualityOptions) {
  auto c = ParseConfig("[train]\nschedule_clock = \"federation\"\n[ps]\ndn_gradient_scale = 0.5\n"
                       "outer_warmup_steps = 8\n", "q.toml");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->train.schedule_clock, "federation");
  EXPECT_EQ(c->ps.dn_gradient_scale, 0.5);
  EXPECT_EQ(c->ps.outer_warmup_steps, 8);
}

TEST(ConfigTest, UnknownKeyNamesKeyAndFile) {
  auto c = ParseConfig("[train]\nlearning_rate = 0.1\n", "configs/typo.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("configs/typo.toml"), std::string::npos);
  EXPECT_NE(c.status().message().find("train.learning_rate"), std::string::npos);
}

TEST(ConfigTest, UnknownSectionIsAnError) {
  auto c = ParseConfig("[trian]\nlr = 0.1\n", "a.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("[trian]"), std::string::npos);
}

TEST(ConfigTest, WrongTypeNamesKeyAndLine) {
  auto c = ParseConfig("[train]\n\nsteps = \"many\"\n", "b.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("b.toml:3"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("train.steps must be an integer"), std::string::npos);
}

TEST(ConfigTest, ImpossibleValuesAreRejected) {
  for (const char* text : {"[train]\nlr = -1.0\n", "[train]\nschedule = \"linear\"\n",
                           "[train]\nmicro_batch = 0\n", "[run]\nid = \"a b\"\n",
                           "[model]\nn_heads = -2\n", "[train]\ndevice = \"tpu\"\n",
                           "[train]\nschedule_clock = \"wall\"\n",
                           "[train]\nschedule_clock = \"federation\"\n[client]\nlocal_time_s = 5.0\n",
                           "[ps]\ndn_gradient_scale = 1.5\n", "[ps]\nouter_warmup_steps = -1\n"}) {
    auto c = ParseConfig(text, "c.toml");
    EXPECT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  }
}

TEST(ConfigTest, InconsistentTimeoutsAreRefusedNamingTheOption) {
  auto d = ParseConfig("", "d.toml");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->ps.redis_wait_ms, 600000);
  for (auto [text, option] : {std::pair{"[client]\nlease_ms = 1000\nheartbeat_ms = 200\nretry_max_ms = 1000\n",
                                        "client.retry_max_ms"},
                              {"[ps]\nstage_ttl_ms = 12000\n", "ps.stage_ttl_ms"},
                              {"[ps]\nsnapshot_ttl_ms = 5000\n", "ps.snapshot_ttl_ms"},
                              {"[ps]\nredis_wait_ms = -1\n", "ps.redis_wait_ms"},
                              {"[client]\nlease_ms = 1000\nheartbeat_ms = 600\nretry_max_ms = 500\n",
                               "client.heartbeat_ms"}}) {
    auto c = ParseConfig(text, "t.toml");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(option), std::string::npos) << c.status().ToString();
  }
  EXPECT_TRUE(ParseConfig("[ps]\nredis_wait_ms = 0\n", "z.toml").ok());
}

TEST(ConfigTest, LimitsHaveDefaultsAndBounds) {
  auto d = ParseConfig("", "d.toml");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->limits.max_connections, 256);
  EXPECT_EQ(d->limits.max_message_bytes, int64_t{512} << 20);
  EXPECT_EQ(d->limits.receiving_updates, 16);
  EXPECT_EQ(d->limits.staged_updates_per_client, 16);
  auto c = ParseConfig("[limits]\nmax_connections = 3\nread_timeout_ms = 500\nstaged_bytes_per_client = 1048576\n",
                       "l.toml");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->limits.max_connections, 3);
  EXPECT_EQ(c->limits.read_timeout_ms, 500);
  EXPECT_EQ(c->limits.staged_bytes_per_client, 1 << 20);
  for (const char* text : {"[limits]\nmax_connections = 0\n", "[limits]\nidle_timeout_ms = 5\n",
                           "[limits]\nmax_message_bytes = 4294967296\n", "[limits]\nstaged_bytes = 10\n"}) {
    auto bad = ParseConfig(text, "c.toml");
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_NE(bad.status().message().find("limits."), std::string::npos) << bad.status().message();
  }
}

TEST(ConfigTest, NormBoundHasDefaultsAndBounds) {
  auto d = ParseConfig("", "d.toml");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_TRUE(d->ps.norm_bound);
  EXPECT_EQ(d->ps.norm_bound_factor, 10);
  EXPECT_EQ(d->ps.norm_bound_window, 50);
  EXPECT_EQ(d->ps.norm_bound_warmup, 5);
  auto off = ParseConfig("[ps]\nnorm_bound = false\n", "o.toml");
  ASSERT_TRUE(off.ok()) << off.status().ToString();
  EXPECT_FALSE(off->ps.norm_bound);
  for (auto [text, option] :
       {std::pair{"[ps]\nnorm_bound_factor = 1.0\n", "ps.norm_bound_factor"},
        {"[ps]\nnorm_bound_window = 0\n", "ps.norm_bound_window"},
        {"[ps]\nnorm_bound_warmup = 0\n", "ps.norm_bound_warmup"},
        {"[ps]\nnorm_bound_window = 4\nnorm_bound_warmup = 5\n", "ps.norm_bound_warmup"}}) {
    auto c = ParseConfig(text, "n.toml");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_NE(c.status().message().find(option), std::string::npos) << c.status().ToString();
  }
}

TEST(ConfigTest, SyntaxErrorHasPosition) {
  auto c = ParseConfig("[train\nlr = 1\n", "d.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("d.toml:1"), std::string::npos) << c.status().message();
}

TEST(ConfigTest, MissingFileIsAClearError) {
  testing::ScopedTempDir dir;
  auto c = LoadConfig(dir.File("absent.toml"));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("absent.toml"), std::string::npos);
}

TEST(ConfigTest, ShippedConfigsParse) {
  for (const char* name : {"tiny.toml", "demo.toml", "demo-smoke.toml", "20m.toml", "125m.toml", "125m-fed.toml",
                           "study.toml", "study-smoke.toml"}) {
    auto c = LoadConfig(testing::SourceDir() + "/configs/" + name);
    EXPECT_TRUE(c.ok()) << name << ": " << c.status().ToString();
  }
}

}  // namespace
}  // namespace fedps
