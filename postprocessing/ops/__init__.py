"""What the operator commands and the metrics use: pidfile, workflow database, dead letters, queue depth."""
