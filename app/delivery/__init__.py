"""One outbound delivery engine: an outbox, a dispatcher, connectors and the egress policy."""
