#!/usr/bin/env python3
"""A stand-in training job for the quickstart: a few CPU-bound "epochs", about 10 seconds.

ecoq runs it with the environment it captured at submission, plus ECOQ_JOB_ID and
CUDA_VISIBLE_DEVICES for the GPUs it was given (none here).
"""

import math
import os
import sys
import time

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
print(f"job {os.environ.get('ECOQ_JOB_ID', '?')}: training for {epochs} epochs", flush=True)
loss = 1.0
for epoch in range(1, epochs + 1):
    started = time.monotonic()
    while time.monotonic() - started < 2.0:  # ~2 s of arithmetic per epoch
        loss = 0.999 * loss + 1e-4 * math.sin(loss)
    print(f"epoch {epoch}/{epochs}: loss {loss:.4f}", flush=True)
print("done", flush=True)
