"""Know what the model does not know: the input gate, the out-of-distribution score and conformal sets."""
