"""The paper's experiments (crnn reproduce grids) and the study tables and figures."""
