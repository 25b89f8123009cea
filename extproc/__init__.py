"""extproc: LLM security for Envoy and Istio (ext_proc / ext_authz server)."""

__version__ = "0.1.0"
