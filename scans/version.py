"""The package version, on its own so that any layer may record it (artifact provenance) without importing the
package root, which opens the Python API."""

__version__ = "0.1.0"
