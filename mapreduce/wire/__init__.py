"""What crosses process boundaries, with no sockets: control messages and the event log's schema."""
