"""ecoq: a carbon-aware job scheduler."""

__version__ = "0.1.0"
