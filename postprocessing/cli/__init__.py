"""The ``postprocessing`` command line; only this package configures logging handlers."""
