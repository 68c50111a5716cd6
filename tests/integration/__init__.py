"""An Engine on a real SQLite store, in this process."""
