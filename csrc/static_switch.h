// Runtime values → compile-time constants, in one place (api.cpp). Each macro runs the lambda-like body with a
// constexpr name bound. Dev builds drop instantiations with -DHMAR_NO_FP16, -DHMAR_NO_HDIM128, -DHMAR_NO_ALT_CONFIGS
// (see hmar_kernels/_build.py); api.cpp reports what was built so tests skip the rest.
#pragma once

#include <stdexcept>
#include <string>

#define HMAR_BOOL_SWITCH(COND, CONST_NAME, ...) \
    [&] {                                       \
        if (COND) {                             \
            constexpr static bool CONST_NAME = true; \
            return __VA_ARGS__();               \
        } else {                                \
            constexpr static bool CONST_NAME = false; \
            return __VA_ARGS__();               \
        }                                       \
    }()

#ifdef HMAR_NO_FP16
#define HMAR_FP16_SWITCH(IS_BF16, ...)                                              \
    [&] {                                                                           \
        if (!(IS_BF16)) throw std::invalid_argument("fp16 kernels were not built"); \
        using elem_type = cutlass::bfloat16_t;                                      \
        return __VA_ARGS__();                                                       \
    }()
#else
#define HMAR_FP16_SWITCH(IS_BF16, ...)           \
    [&] {                                        \
        if (IS_BF16) {                           \
            using elem_type = cutlass::bfloat16_t; \
            return __VA_ARGS__();                \
        } else {                                 \
            using elem_type = cutlass::half_t;   \
            return __VA_ARGS__();                \
        }                                        \
    }()
#endif

#ifdef HMAR_NO_HDIM128
#define HMAR_HEADDIM_SWITCH(HEADDIM, ...)                                                               \
    [&] {                                                                                               \
        if ((HEADDIM) != 64) throw std::invalid_argument("head dim " + std::to_string(HEADDIM) + " was not built"); \
        constexpr static int kHeadDim = 64;                                                             \
        return __VA_ARGS__();                                                                           \
    }()
#else
#define HMAR_HEADDIM_SWITCH(HEADDIM, ...)                                                    \
    [&] {                                                                                    \
        if ((HEADDIM) == 64) {                                                               \
            constexpr static int kHeadDim = 64;                                              \
            return __VA_ARGS__();                                                            \
        } else if ((HEADDIM) == 128) {                                                       \
            constexpr static int kHeadDim = 128;                                             \
            return __VA_ARGS__();                                                            \
        }                                                                                    \
        throw std::invalid_argument("head dim " + std::to_string(HEADDIM) + " is not supported"); \
    }()
#endif

#ifdef HMAR_NO_ALT_CONFIGS
#define HMAR_CONFIG_SWITCH(CONFIG, ...)                                                                 \
    [&] {                                                                                               \
        if ((CONFIG) != 0) throw std::invalid_argument("config " + std::to_string(CONFIG) + " was not built"); \
        constexpr static int kConfig = 0;                                                               \
        return __VA_ARGS__();                                                                           \
    }()
#else
#define HMAR_CONFIG_SWITCH(CONFIG, ...)                                                   \
    [&] {                                                                                 \
        if ((CONFIG) == 0) {                                                              \
            constexpr static int kConfig = 0;                                             \
            return __VA_ARGS__();                                                         \
        } else if ((CONFIG) == 1) {                                                       \
            constexpr static int kConfig = 1;                                             \
            return __VA_ARGS__();                                                         \
        } else if ((CONFIG) == 2) {                                                       \
            constexpr static int kConfig = 2;                                             \
            return __VA_ARGS__();                                                         \
        }                                                                                 \
        throw std::invalid_argument("config " + std::to_string(CONFIG) + " does not exist"); \
    }()
#endif
