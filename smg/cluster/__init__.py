"""The gateway's state shared across the cluster: named CRDT stores replicated over
the mesh (workers, health reports, in-flight load, tenant counters, prefix
summaries), their reconciliation with the local registry, and the `/mesh/*` routes."""
