"""DML benchmark engine: protocol, registry, training, evaluation and run records."""

__version__ = "0.1.0"
