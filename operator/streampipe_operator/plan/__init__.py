"""Pure planning functions: observed state in, actions out. No I/O in this package."""
