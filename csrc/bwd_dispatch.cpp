// The one place where the backward's runtime (dtype, head dim, config) become template arguments. Torch-free,
// like fwd_dispatch.cpp.
#include <stdexcept>
#include <string>
#include <type_traits>

#include <cutlass/numeric_types.h>

#include "bwd_tile_size.h"
#include "flash_bwd.h"
#include "static_switch.h"

namespace hmar {

void run_bwd(BwdParams const& params, cudaStream_t stream) {
    HMAR_FP16_SWITCH(params.is_bf16, [&] {
        HMAR_HEADDIM_SWITCH(params.head_dim, [&] {
            auto run = [&](auto config) { run_bwd_sm90<elem_type, kHeadDim, decltype(config)::value>(params, stream); };
            static_assert(kNumBwdConfigsSm90 == 7 && kDefaultBwdConfigSm90 == 4, "one case per config");
            switch (params.config) {
            case 4: return run(std::integral_constant<int, 4>{});
            HMAR_IF_ALT_CONFIGS(
            case 0: return run(std::integral_constant<int, 0>{});
            case 1: return run(std::integral_constant<int, 1>{});
            case 2: return run(std::integral_constant<int, 2>{});
            case 3: return run(std::integral_constant<int, 3>{});
            case 5: return run(std::integral_constant<int, 5>{});
            case 6: return run(std::integral_constant<int, 6>{});)
            default: HMAR_NOT_BUILT("backward config", params.config);
            }
        });
    });
}

BwdConfigInfo bwd_config_info(int head_dim, int config) {
    if (config < 0 || config >= kNumBwdConfigsSm90) {
        throw std::invalid_argument("backward config " + std::to_string(config) + " does not exist (0.." +
                                    std::to_string(kNumBwdConfigsSm90 - 1) + ")");
    }
    BwdTileSm90 const tile = bwd_tile_sm90(head_dim, config);
    bool const separate = tile.dq_mode == BwdDQMode::SeparatePass;
    return {tile.block_rows, tile.block_cols, separate, !separate, tile.paired};
}

}  // namespace hmar
