"""The self-healing client: reconnect supervisor, backoff, topology recovery,
health poll, and the recovering consumer."""
