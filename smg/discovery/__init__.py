"""Worker discovery: workers registered from a source other than flags and `POST /workers`
(a JSON manifest file; Kubernetes next). A sans-IO core (`manifest`: parse, and the
changes that make the registry match) and one trio shell per source. A worker the
manifest lists is discovery's, however it was first registered (leaving the manifest
removes it); other workers are never touched; every node of a cluster runs it,
and the replicated registry keeps one record per worker (ids come from URLs)."""
