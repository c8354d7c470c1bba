"""The operator's side of a fleet of agents: status view, control commands, run logs."""
