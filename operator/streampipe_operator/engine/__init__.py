"""The housekeeping engine the operator and ``streampipe up`` share: one pass of observe -> plan ->
apply on the server (``housekeeping``), and how a spec maps onto the worker's settings and the
planners' policies (``spec_mapping``).

May import ``streams``, ``plan``, ``api`` and ``streampipe_worker``; never ``kube``, ``controller``,
``local`` or ``cli``. It knows workloads only through its ``WorkloadBackend`` protocol.
"""
