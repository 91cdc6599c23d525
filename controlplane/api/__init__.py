"""The gRPC edge: servicers that convert proto to service calls and back."""
