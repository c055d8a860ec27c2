"""The fused operations: each a plain torch reference (the CPU path and the tests' oracle) plus
dispatch to its Triton kernel (kernels/) or the CUDA extension (csrc/, via `cuda_ext`).

    rng            counter-based Gaussian noise (Philox4x32-10 + Box–Muller), keyed by member
    update         the refine tick (`ddpm_tick`) and the re-noise (`renoise`), in place
    level_argmax   argmax (and max probability) of a level head's last linear layer
    dispatch       backend choice: torch | triton | cuda (`resolve_backend`, `available_backends`)

ops knows nothing of models.
"""
