"""A standing cluster: a service that queues jobs from clients and runs each on the workers
that stay (`mapreduce cluster start`, `submit`, `jobs`, `cancel`, `cluster stop`)."""
