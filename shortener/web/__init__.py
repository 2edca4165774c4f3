"""The HTTP edge: redirect, JSON API, operations endpoints and RFC 9457 problems."""

# The contract's request body limit; nginx's client_max_body_size matches it.
MAX_BODY_BYTES = 16_384
# A batch create carries up to MAX_BATCH_ITEMS create bodies in one request of at most this.
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
MAX_BATCH_ITEMS = 1000
