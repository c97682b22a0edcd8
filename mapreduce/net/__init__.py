"""Transport shared by both sides: the data plane (data servers, fetchers), keys, host identity."""
