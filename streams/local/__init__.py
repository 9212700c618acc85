"""Running without a cluster: a broker started on loopback (Apache Kafka or Tansu), the flow's
stages as supervised local processes, and the runtime that ties them together."""
