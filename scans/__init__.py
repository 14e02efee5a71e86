"""scans: a reproducible pipeline for SCANS (Cao et al., AAAI 2025)."""

__version__ = "0.1.0"
