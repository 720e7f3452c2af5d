"""``streampipe up``: a StreamPipeline on one machine. The pipeline as a workload backend
(``pipeline``), the run loop and its stop/drain rules (``run``), the summary's accounting
(``accounting``, pure), the workers' counters (``counters``), starting worker processes (``workers``;
``processes`` supervises them and also serves the Kubernetes tests' pod runner), the embedded Valkey
(``embedded``), the demo producer (``demo``), what a run shows and reports (``models``) and the views
(``liveview``).

May import ``engine``, ``streams``, ``plan``, ``api`` and ``streampipe_worker``; never ``kube``,
``controller`` or ``cli``.
"""
