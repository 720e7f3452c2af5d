"""``streampipe up``: a StreamPipeline on one machine. Worker processes instead of pods
(``processes``, also the Kubernetes tests' pod runner), the embedded Valkey (``embedded``), the demo
producer (``demo``), the pipeline loop (``pipeline``), the summary's accounting (``accounting``, pure)
and what a person sees (``liveview``).

May import ``engine``, ``streams``, ``plan``, ``api`` and ``streampipe_worker``; never ``kube``,
``controller`` or ``cli``.
"""
