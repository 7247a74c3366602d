"""rcsd client: typed HTTP clients for the rubric and teacher services."""
