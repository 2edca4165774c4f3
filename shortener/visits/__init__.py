"""Visit analytics: who followed a link, from where, on what, counted off the request path."""
