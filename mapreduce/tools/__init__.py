"""Tools around the core: status page, report, crash test, launcher, virtual network, corpus."""
