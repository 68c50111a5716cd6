"""Log wiring: stores, the msgpack/pydantic codec, configuration."""
