"""The fault harness: agents on separate hosts (network namespaces), faults, load, invariants."""
