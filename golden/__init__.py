"""PyTorch + timm front end: calibration, fake-quant models, export of integer programs."""
