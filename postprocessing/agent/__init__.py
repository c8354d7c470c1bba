"""The agent: one loop that owns dispatch, outbound messages and acknowledgement."""
