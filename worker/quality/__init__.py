"""Quality of a precision map, measured against the base precision on the same resident model."""
