"""The benchmark's suites, one module each; ``python -m benchmarks.overhead --suite NAME`` runs them."""
