"""Deploying trained agents on robots: the latency-aware receding-horizon runner (:mod:`.runner`), the
``diffplan serve`` / ``diffplan deploy`` glue (:mod:`.cli`) and the bridge benchmarks (:mod:`.bench`,
``python -m diffplan.deploy.bench``).

It drives :mod:`diffplan.envs.robot` (protocol, server, client env, safety) as a client and loads trained runs;
the robot package itself never imports this one or the training code. Needs the ``robot`` extra.
"""
