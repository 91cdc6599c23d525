"""The service layer: use cases over a unit of work; no SQL, no gRPC, no torch."""
