"""What every layer may use: atomic files (:mod:`.fileio`), the runtime's device and
precision choices (:mod:`.runtime`), the allocator setting, torch.distributed set-up and
plots."""
