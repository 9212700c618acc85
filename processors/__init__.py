"""Pure processing code: Documents in, Documents out. Nothing here imports Kafka or the network."""
