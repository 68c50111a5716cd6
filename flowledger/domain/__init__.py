"""The pure domain: aggregates, events and rules. No I/O, no clock reads."""
