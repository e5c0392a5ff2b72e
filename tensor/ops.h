// Every tensor kernel, one include. Each header below is one op family, forward and backward side by side.
#pragma once
#include "tensor/conv.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/io.h"
#include "tensor/layer_norm.h"
#include "tensor/matmul.h"
#include "tensor/random.h"
#include "tensor/reduce.h"
#include "tensor/tensor.h"
