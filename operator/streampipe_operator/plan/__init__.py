"""Pure planning functions: observed state in, actions out. No I/O in this package.

- ``entry_ids``: stream entry IDs as ordered values, with successor/predecessor;
- ``observed``: what was seen on the server (stream, groups, consumers, lag with its source, the whole
  ``StreamObservation``);
- ``backlog``: lag + pending, and when the server's lag figure can be trusted;
- ``scaling``: replica decisions (bounded scale-up, stabilized scale-down);
- ``groups``: create / recreate / destroy consumer groups, teardown on deletion;
- ``consumers``: which idle consumers to remove (never one with pending entries);
- ``retention``: protected XTRIM actions, the held-back report and a retention pass's outcome.

Inputs are small frozen models defined here, not the CR models: the handler maps the spec onto them.
Time is always passed in (``now``, Unix seconds), never read.

May import only itself, pydantic and the standard library: not ``api`` (the ``plan-pure`` contract in
pyproject.toml keeps it so), nor any I/O client.
"""
