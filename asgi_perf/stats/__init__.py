"""Numbers: histograms and per-route statistics."""
