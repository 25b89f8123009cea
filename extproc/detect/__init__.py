"""Detection: text in, findings out. Knows nothing of gRPC or Envoy."""
