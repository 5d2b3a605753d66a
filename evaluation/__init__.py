"""Search quality evaluation: detection, classification and retrieval figures
of the committed models on any copy of the datasets (``python -m evaluation``)."""
