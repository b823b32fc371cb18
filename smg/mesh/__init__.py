"""Cluster membership: SWIM with Lifeguard (sans-IO core), its wire format and
AES-GCM keyring, the UDP/TCP transport and ordered per-peer streams, and the trio
node that drives them. Knows nothing of the gateway."""
