"""crewflow application layer."""
