"""Tests run single-threaded: small tensors gain nothing from threads, and on a shared 2-core
machine torch's thread pool makes them much slower."""
import torch

torch.set_num_threads(1)
