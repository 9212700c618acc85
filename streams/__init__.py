"""The runtime: everything that talks to Kafka."""
