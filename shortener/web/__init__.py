"""The HTTP edge: redirect, JSON API, operations endpoints and RFC 9457 problems."""

# The contract's request body limit; nginx's client_max_body_size matches it.
MAX_BODY_BYTES = 16_384
