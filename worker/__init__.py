"""streamworker: Lambda's stream event source mapping semantics as a container daemon."""

__version__ = "0.1.0"
