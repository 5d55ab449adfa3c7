#include "model/trainer.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fedps {
namespace {

TEST(ScheduleTest, WarmupThenCosineToMinimum) {
  TrainOptions o;
  o.lr = 1.0;
  o.min_lr_ratio = 0.1;
  o.warmup_steps = 10;
  o.steps = 110;
  o.schedule = "cosine";
  EXPECT_DOUBLE_EQ(LearningRate(o, 0), 0.1);   // (0 + 1) / 10
  EXPECT_DOUBLE_EQ(LearningRate(o, 9), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 10), 1.0);  // cosine starts at the peak
  EXPECT_NEAR(LearningRate(o, 60), 0.55, 1e-12);  // halfway: min + (max - min) / 2
  EXPECT_NEAR(LearningRate(o, 110), 0.1, 1e-12);
  EXPECT_NEAR(LearningRate(o, 500), 0.1, 1e-12);  // past the end: the final value
}

TEST(ScheduleTest, WarmupStableDecay) {
  TrainOptions o;
  o.lr = 2.0;
  o.min_lr_ratio = 0.0;
  o.warmup_steps = 0;
  o.steps = 100;
  o.schedule = "wsd";
  o.decay_fraction = 0.2;  // decay over steps 80..100
  EXPECT_DOUBLE_EQ(LearningRate(o, 0), 2.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 79), 2.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 80), 2.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 90), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 100), 0.0);
}

TEST(ScheduleTest, Constant) {
  TrainOptions o;
  o.lr = 0.5;
  o.warmup_steps = 4;
  o.schedule = "constant";
  EXPECT_DOUBLE_EQ(LearningRate(o, 1), 0.25);
  EXPECT_DOUBLE_EQ(LearningRate(o, 1000), 0.5);
}

// The federation clock: a cycle trained from global version v starts at v * local steps,
// and the schedule is then read at that position (train.steps = all clients' steps).
TEST(ScheduleTest, FederationClock) {
  EXPECT_EQ(FederationScheduleStep(0, 16), 0);
  EXPECT_EQ(FederationScheduleStep(7, 16), 112);
  EXPECT_EQ(FederationScheduleStep(-3, 16), 0);
  TrainOptions o;
  o.lr = 1.0;
  o.min_lr_ratio = 0.0;
  o.warmup_steps = 0;
  o.steps = 2 * 10 * 16;  // 2 clients x 10 updates x 16 steps
  o.schedule = "cosine";
  // Halfway through the federation (version 10 of 20), whichever client trains it.
  EXPECT_NEAR(LearningRate(o, FederationScheduleStep(10, 16)), 0.5, 1e-12);
  EXPECT_NEAR(LearningRate(o, FederationScheduleStep(20, 16)), 0.0, 1e-12);
}

}  // namespace
}  // namespace fedps
