"""Networks as plain `nn.Module`s: the registry (`networks`), reading victims and detectors from
their checkpoints without unpickling code (`victim`, `guard`), and inner features (`features`).
Framework-free: nothing here knows Lightning."""
