"""The lecture's studies as DVC stages: initialisation per layer, and batch normalization."""
