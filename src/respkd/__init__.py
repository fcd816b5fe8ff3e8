"""respkd: response-based knowledge distillation (Hinton, Vinyals & Dean 2015) for PyTorch."""

__version__ = "0.1.0"
