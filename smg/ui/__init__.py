"""The live cluster page (`GET /ui`): its JSON views, the sampler of its time series, its routes and
its static assets (no build step, nothing fetched from elsewhere: the page works offline)."""
