"""How much traffic is let in: admission (permits, a FIFO queue, a token bucket) and
per-tenant rate limits whose counters the cluster replicates. Sans-IO apart from
the waits on trio primitives; the data plane asks, these answer."""
