"""The CLI, and engines in real processes (killed ones too)."""
