"""Tests run single-threaded: their models are tiny, and two processes each spinning two OpenMP
threads on a 2-core machine (a test and the run it launches, or a parallel job) slow each other
down many times over."""

import os

import torch

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the runs that tests launch as subprocesses
torch.set_num_threads(1)
