"""The package version, in one place (the renderers name it in their output)."""

__version__ = "0.1.0"
