"""Worker discovery: workers registered from a source other than flags and `POST /workers`
(a JSON manifest file, or Kubernetes pods). Sans-IO cores (`manifest`: parse, and the changes
that make the registry match; `pods`: which pods are workers, kept from LIST and WATCH), one
trio shell per source, and one way of applying what a source wants (`apply`). A worker the
source wants is discovery's, however it was first registered (leaving the source removes it);
other workers are never touched; every node of a cluster runs it, and the replicated registry
keeps one record per worker (ids come from URLs)."""
