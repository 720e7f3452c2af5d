"""The Redis side of the operator: observe a stream and apply the planners' actions (``admin``), the
one XRANGE pager (``paging``), and the data commands that work on any server: which server and
streams a command names (``targets``), the stream report of ``streampipe status`` (``report``), the
dead-letter tools of ``streampipe dlq`` (``dlq``), ``streampipe produce``'s event parsing and sending
(``producing``), and the one rich Console factory (``console``).

May import ``plan``, ``api`` and ``streampipe_worker``; never ``engine``, ``kube``, ``controller``,
``local`` or ``cli``. Named ``streams``, not ``redis``, so that it never shadows the client library.
"""
