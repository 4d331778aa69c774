"""Speed and operation counts of adaptive convolutions against ordinary ones (run from the repository root)."""
