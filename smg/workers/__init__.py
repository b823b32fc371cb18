"""Workers and their lifecycle: the registry (URL normalisation, ids, the per-model
index of routable workers), the health state machine, the circuit breaker, the
retry schedule (sans-IO), and the registrar that probes, discovers and drains them
over HTTP."""
