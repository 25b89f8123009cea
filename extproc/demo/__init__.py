"""A small mock LLM upstream (OpenAI and Anthropic shapes) for `extproc up` and the tests."""
