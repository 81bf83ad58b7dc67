"""The runner: the only code that knows the config schema (``python -m odenet.run`` / ``odenet``).

``config`` (schema, composition, the command line's precheck), ``ranges`` and ``validate`` (every check, before
anything is written), ``build`` (registries), ``loop``, ``evaluate``, ``measure`` (the measurement registry),
``adaptation``, ``accel``, ``tracking``, ``rundir`` (``RunDir``: the one reader and writer of a run folder) and
``train`` (``train_and_evaluate``).
"""
