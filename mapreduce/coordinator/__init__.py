"""The coordinator: the pure scheduler, the socket loop around it, and transfers beside it."""
