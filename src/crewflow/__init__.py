"""crewflow."""
