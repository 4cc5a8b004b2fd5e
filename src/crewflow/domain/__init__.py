"""crewflow domain layer."""
