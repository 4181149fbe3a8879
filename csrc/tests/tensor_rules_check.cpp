// Host-only driver of csrc/tensor_rules.h for tests/test_tensor_rules.py: reads one tensor a line,
// "rank element_size address size_0 .. size_{rank-1} stride_0 .. stride_{rank-1}", and prints
// "readable kernel_stride_0 .. kernel_stride_{rank-1}" (readable: 1 or 0).
#include <cstdint>
#include <iostream>

#include "../tensor_rules.h"

int main() {
    int rank = 0;
    int64_t element_size = 0;
    uint64_t address = 0;
    while (std::cin >> rank >> element_size >> address) {
        if (rank < 1 || rank > 8) { return 2; }
        int64_t sizes[8], strides[8];
        for (int d = 0; d < rank; ++d) { std::cin >> sizes[d]; }
        for (int d = 0; d < rank; ++d) { std::cin >> strides[d]; }
        std::cout << hmar::tma_readable_layout(sizes, strides, rank, element_size, uintptr_t(address));
        for (int d = 0; d < rank; ++d) { std::cout << ' ' << hmar::kernel_stride(sizes, strides, rank, d); }
        std::cout << '\n';
    }
    return 0;
}
