"""The fused operations: each a plain torch reference (the CPU path and the tests' oracle) plus
dispatch to its Triton kernel (kernels/) or the CUDA extension (csrc/, via `cuda_ext`).

    rng            counter-based Gaussian noise (Philox4x32-10 + Box–Muller), keyed by member
    update         the refine tick (`ddpm_tick`) and the re-noise (`renoise`), in place
    level_argmax   argmax (and max probability) of a level head's last linear layer
    row_linear     a linear layer row by row: a row's result does not depend on the batch
    conv_block     the U-Net's fused circular 3×3 conv and residual block
    dispatch       backend choice: torch | triton | cuda (`resolve_backend`, `available_backends`)
                   and the one table of implementations per (op, backend)
    cuda_ext       the CUDA extension: load or JIT-build it, its sources and flags

The Triton modules are imported only when a Triton backend runs: the torch path needs no Triton.
ops knows nothing of models.
"""
