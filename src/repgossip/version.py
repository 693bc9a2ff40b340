"""The release of this package, for run records (repgossip.provenance) and the package's `__version__`."""

__version__ = "0.2.0"
