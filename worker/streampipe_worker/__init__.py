"""streampipe worker runtime: the consumer loop every worker pod runs.

This package never imports the operator; the operator imports it (for the settings model, so that
environment variable names have one source).
"""

__version__ = "0.1.0"
