"""Jobs: subprocesses in their own process groups, under slots and resource limits."""
