"""The Kubernetes side: the async API client (``client``), the pure worker Deployment builders
(``deployments``) and the pure builder of a StreamPipeline's status and conditions (``status``).

May import ``engine``, ``streams``, ``plan``, ``api`` and ``streampipe_worker``; never ``controller``,
``local`` or ``cli``.
"""
