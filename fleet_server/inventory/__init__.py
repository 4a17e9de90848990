"""Device tags and hardware inventory: rules, queries, API."""
