"""Pure domain: no database, no Engine."""
