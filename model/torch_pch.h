// Precompiled once for every target that includes LibTorch (see CMakeLists.txt).
#pragma once
#include <torch/torch.h>
