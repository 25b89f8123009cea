"""The gRPC edges: translate Envoy messages to and from policy decisions."""
