"""What users write: workflow definitions, handler return types, tools (DESIGN §5)."""
