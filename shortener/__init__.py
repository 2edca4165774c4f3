"""shortener: a URL shortener that keeps answering redirects when traffic spikes and parts fail."""

__version__ = "0.1.0"
