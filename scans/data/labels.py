"""The two labels every prompt carries (the registry, the transforms and the splits share them)."""

HARMFUL = "harmful"
BENIGN = "benign"
LABELS = (HARMFUL, BENIGN)
