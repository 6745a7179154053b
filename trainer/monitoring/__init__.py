"""What a run shows and records: the device-side meter, TensorBoard (logger), the terminal
(display), per-layer diagnostics, the names of non-finite gradients (nonfinite), and reading runs
back (report, inspect_grads)."""
