"""crewflow entrypoints layer."""
