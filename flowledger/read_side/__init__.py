"""Answers from the log and its projections: queries, the log itself, time travel."""
