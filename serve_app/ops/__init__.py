"""Operating a cluster: start and stop it (launcher, Ray node), start the embedded services
alone for ``serve run`` (``services``), clear what a killed start left behind, check Redis
for leaked keys.

May import: every other package of ``serve_app``."""
