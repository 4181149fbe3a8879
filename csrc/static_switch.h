// Runtime values → compile-time constants, in one place (fwd_dispatch.cpp). Each switch runs the lambda-like body
// with a constexpr name bound, or throws std::invalid_argument for a value that is not built. Dev builds drop
// instantiations with -DHMAR_NO_FP16, -DHMAR_NO_HDIM128, -DHMAR_NO_ALT_CONFIGS (see hmar_kernels/_build.py);
// api.cpp reports what was built so tests skip the rest.
#pragma once

#include <stdexcept>
#include <string>

// HMAR_IF_<PART>(code): the code in builds that contain that part, nothing in dev builds without it.
#ifdef HMAR_NO_FP16
#define HMAR_IF_FP16(...)
#else
#define HMAR_IF_FP16(...) __VA_ARGS__
#endif
#ifdef HMAR_NO_HDIM128
#define HMAR_IF_HDIM128(...)
#else
#define HMAR_IF_HDIM128(...) __VA_ARGS__
#endif
#ifdef HMAR_NO_ALT_CONFIGS
#define HMAR_IF_ALT_CONFIGS(...)
#else
#define HMAR_IF_ALT_CONFIGS(...) __VA_ARGS__
#endif

// One case: when VALUE == V, run the body with `constexpr int CONST_NAME = V`.
#define HMAR_INT_CASE(VALUE, CONST_NAME, V, ...)   \
    if ((VALUE) == (V)) {                          \
        constexpr static int CONST_NAME = V;       \
        return __VA_ARGS__();                      \
    }

#define HMAR_NOT_BUILT(WHAT, VALUE) \
    throw std::invalid_argument(std::string(WHAT) + " " + std::to_string(VALUE) + " is not built")

#define HMAR_FP16_SWITCH(IS_BF16, ...)                                        \
    [&] {                                                                     \
        if (IS_BF16) {                                                        \
            using elem_type = cutlass::bfloat16_t;                            \
            return __VA_ARGS__();                                             \
        }                                                                     \
        HMAR_IF_FP16(using elem_type = cutlass::half_t; return __VA_ARGS__();) \
        throw std::invalid_argument("fp16 kernels are not built");            \
    }()

#define HMAR_HEADDIM_SWITCH(HEADDIM, ...)                                      \
    [&] {                                                                      \
        HMAR_INT_CASE(HEADDIM, kHeadDim, 64, __VA_ARGS__)                      \
        HMAR_IF_HDIM128(HMAR_INT_CASE(HEADDIM, kHeadDim, 128, __VA_ARGS__))    \
        HMAR_NOT_BUILT("head dim", HEADDIM);                                   \
    }()

#define HMAR_CONFIG_SWITCH(CONFIG, ...)                                        \
    [&] {                                                                      \
        HMAR_INT_CASE(CONFIG, kConfig, 0, __VA_ARGS__)                         \
        HMAR_IF_ALT_CONFIGS(HMAR_INT_CASE(CONFIG, kConfig, 1, __VA_ARGS__)     \
                            HMAR_INT_CASE(CONFIG, kConfig, 2, __VA_ARGS__))    \
        HMAR_NOT_BUILT("config", CONFIG);                                      \
    }()
