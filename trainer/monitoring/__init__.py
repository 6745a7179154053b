"""What a run shows and records: the device-side meter, TensorBoard (logger), the terminal
(display), per-layer diagnostics, and reading runs back (report, inspect_grads)."""
