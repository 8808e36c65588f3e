"""``dorado-admin``: the operator's console (queue, jobs, workers, models, organizations).

It talks to the database and object store directly through ``core`` services, like the
``airflow`` or ``superset`` CLIs; it never imports ``api`` or ``worker``.
"""
