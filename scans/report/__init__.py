"""Tables and figures, built only from artifacts."""
