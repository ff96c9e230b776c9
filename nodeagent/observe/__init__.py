"""What the data plane tells: events, the observation sink, metrics and the aggregated stats."""
