"""What is on a topic: names, records, bytes and headers. Imports no Kafka client."""
