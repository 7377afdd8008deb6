"""The gRPC server: the six hodei.jobs services, wired to the event-sourced core."""
