"""The built-in cells: LSTM and fast weights."""
