"""The kopf operator: handler registrations (``handlers``), the process start-up (``runner``), one
pipeline's reconcile loop (``reconcile``), the ``/scale`` workload backend of its housekeeping pass
(``scaler``), the writes to its worker Deployments (``deployments``) and its Events (``events``),
its deletion (``teardown``), which pipeline owns a stream (``ownership``), the connection to a
pipeline's server (``connections``) and the operator's Prometheus metrics (``metrics``).

May import ``kube``, ``engine``, ``streams``, ``plan``, ``api`` and ``streampipe_worker``; never
``local`` or ``cli``. kopf registers the handlers when ``handlers`` is imported, which ``runner`` does
when the operator starts.
"""
