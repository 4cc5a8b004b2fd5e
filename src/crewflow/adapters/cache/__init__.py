"""Cache adapters (in-memory here; Redis elsewhere)."""
