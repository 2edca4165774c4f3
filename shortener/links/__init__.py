"""The domain: links, their input rules, code generation and the write service."""
