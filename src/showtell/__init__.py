"""showtell: the Show and Tell image captioner (im2txt) in PyTorch."""

__version__ = "0.1.0"
