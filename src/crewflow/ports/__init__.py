"""crewflow ports layer."""
