"""streampipe worker runtime: the consumer loop every worker pod runs, and what the operator and the
CLIs share with it.

This package never imports the operator; the operator imports it, so that each of these has one
source:

- ``settings``: the worker's settings model and its environment variable names (``WorkerSettings``,
  ``render_env``, ``load_settings``, ``ENV_PREFIX``), rendered into every worker Deployment;
- ``connection``: the one Redis client factory (``ConnectionSettings``, ``create_client``,
  ``create_async_client``, ``parse_url``, ``AsyncClient``);
- ``capabilities``: server detection (``ServerCapabilities``, ``adetect_capabilities``);
- ``deadletter``: the dead-letter envelope and replay (``DeadLetterEnvelope``, ``replay``,
  ``ReplayResult``);
- ``producer``: the typed producer (``Producer``, ``AsyncProducer``, ``Event``);
- ``durations``: duration parsing and formatting;
- ``entry_ids``: stream entry IDs (``EntryId``).

Handler code in team images imports ``router`` (``Router``, ``Entry``, ``PermanentError``, ``batch``).
"""

__version__ = "0.1.0"
