"""crewflow adapters layer."""
