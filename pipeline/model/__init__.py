"""The model chain: the head, assembly of preprocessing → backbone → pooling → head, freezing, parity."""
