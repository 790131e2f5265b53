"""PyTorch + timm front end: calibration, fake-quant models, export of integer programs."""
__version__ = "0.1.0"
